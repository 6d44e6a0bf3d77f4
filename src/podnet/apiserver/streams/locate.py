"""Which pod, container, node and agent endpoint a streaming request means.

Pure decisions (`choose_container`, `node_endpoint`) and one registry lookup (`locate`). Every
failure is an `ApiError` with upstream's wording, raised before a connection is upgraded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from podnet.api.errors import ApiError, bad_request
from podnet.api.resources import BY_PLURAL
from podnet.apiserver.registry import Registry

Obj = dict[str, Any]

DEFAULT_KUBELET_PORT = 10250


@dataclass(frozen=True, slots=True)
class AgentEndpoint:
    node: str
    host: str
    port: int

    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def hint(self) -> str:
        return f"is the podnet agent of node {self.node} running? `podnet status` shows it"


@dataclass(frozen=True, slots=True)
class Located:
    pod: Obj
    container: str
    agent: AgentEndpoint

    @property
    def namespace(self) -> str:
        return str(self.pod["metadata"]["namespace"])

    @property
    def name(self) -> str:
        return str(self.pod["metadata"]["name"])

    @property
    def phase(self) -> str:
        return str((self.pod.get("status") or {}).get("phase") or "Unknown")


def container_names(pod: Obj, key: str) -> list[str]:
    spec = pod.get("spec") or {}
    return [str(c.get("name")) for c in spec.get(key) or [] if isinstance(c, dict)]


def choose_container(pod: Obj, requested: str | None) -> str:
    """The container a request means: the named one, else the default-container annotation,
    else the first; an unknown name is a 400 like upstream."""
    name = pod.get("metadata", {}).get("name", "")
    containers = container_names(pod, "containers")
    init = container_names(pod, "initContainers")
    if requested:
        if requested in container_names(pod, "ephemeralContainers"):
            raise bad_request(
                f"container {requested} of pod {name} is an ephemeral container: podnet does "
                "not run ephemeral containers (kubectl debug); use kubectl exec or a debug pod"
            )
        if requested not in containers and requested not in init:
            raise bad_request(f"container {requested} is not valid for pod {name}")
        return requested
    annotated = (pod.get("metadata", {}).get("annotations") or {}).get(
        "kubectl.kubernetes.io/default-container"
    )
    if annotated in containers:
        return str(annotated)
    if not containers:
        raise bad_request(f"pod {name} has no containers")
    return containers[0]


def node_endpoint(node: Obj) -> AgentEndpoint:
    """The agent endpoint (InternalIP, kubelet port) a Node's agent reported."""
    name = str(node.get("metadata", {}).get("name", ""))
    status = node.get("status") or {}
    addresses = [a for a in status.get("addresses") or [] if isinstance(a, dict)]
    internal_ips = [a.get("address") for a in addresses if a.get("type") == "InternalIP"]
    address = (
        internal_ips[0] if internal_ips else (addresses[0].get("address") if addresses else None)
    )
    if not address:
        raise ApiError(
            503,
            "ServiceUnavailable",
            f"node {name} reports no address; is its podnet agent running?",
        )
    port = ((status.get("daemonEndpoints") or {}).get("kubeletEndpoint") or {}).get("Port")
    port = int(port) if isinstance(port, int) and port > 0 else DEFAULT_KUBELET_PORT
    return AgentEndpoint(name, str(address), port)


async def locate(
    registry: Registry, namespace: str, pod_name: str, container: str | None
) -> Located:
    """The pod, the container the request means, and the agent of the pod's node."""
    pod = await registry.get(BY_PLURAL["pods"], namespace, pod_name)
    chosen = choose_container(pod, container)
    node_name = (pod.get("spec") or {}).get("nodeName")
    if not node_name:
        raise bad_request(f"pod {pod_name} does not have a host assigned")
    try:
        node = await registry.get(BY_PLURAL["nodes"], None, node_name)
    except ApiError as exc:
        if exc.code == 404:
            raise bad_request(
                f"pod {pod_name} is bound to node {node_name}, which does not exist any more"
            ) from None
        raise
    return Located(pod, chosen, node_endpoint(node))


def require_running(located: Located, verb: str) -> None:
    """Upstream's check before exec, attach and port-forward."""
    if located.phase in ("Succeeded", "Failed"):
        raise bad_request(
            f"cannot {verb} a container in a completed pod; current phase is {located.phase}"
        )
    if located.phase != "Running":
        raise bad_request(
            f"unable to {verb} pod {located.name}: pod is not running "
            f"(current phase is {located.phase})"
        )
