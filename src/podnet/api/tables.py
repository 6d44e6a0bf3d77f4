"""Server-side printing: `meta.k8s.io/v1` Tables for `kubectl get`.

What belongs here: `is_table_request(accept)` (does the Accept header ask for a Table?) and
`to_table(res, objs, now, include_object)`, with one column set and one row printer per kind,
transcribed from k8s.io/kubernetes `pkg/printers/internalversion/printers.go` (the code a real
kube-apiserver runs), so `kubectl get pods` prints `NAME READY STATUS RESTARTS AGE` and
`-o wide` adds the priority-1 columns.

Invariants:
- Pure: the clock is the `now` argument; Age cells use upstream's HumanDuration.
- Rows always carry every column, wide ones included (the server prints with Wide=true and
  kubectl hides priority > 0 unless `-o wide`), in `columnDefinitions` order.
- A malformed object never raises: missing or wrongly typed fields print as upstream prints
  zero values (`<none>`, `0`, `<unknown>`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from podnet.api import errors
from podnet.api.interface import Obj
from podnet.api.meta import parse_rfc3339, rfc3339
from podnet.api.resources import Resource
from podnet.api.selectors import LabelSelector

INCLUDE_OBJECT_POLICIES = ("None", "Metadata", "Object")

# --- Accept header -------------------------------------------------------------------------


def is_table_request(accept: str) -> bool:
    """True when the first acceptable JSON media type in `accept` is a meta.k8s.io Table
    (`application/json;as=Table;v=v1;g=meta.k8s.io`); v1beta1 Tables are served as v1."""
    for media_range in accept.split(","):
        parts = [p.strip() for p in media_range.split(";")]
        if parts[0] not in ("application/json", "*/*", "application/*"):
            continue
        params: dict[str, str] = {}
        for p in parts[1:]:
            k, _, v = p.partition("=")
            params[k.strip().lower()] = v.strip().strip('"')
        if (
            params.get("as") == "Table"
            and params.get("g") == "meta.k8s.io"
            and params.get("v") in ("v1", "v1beta1")
        ):
            return True
        if "as" not in params:
            return False  # plain JSON preferred before any Table form
    return False


# --- helpers -------------------------------------------------------------------------------


def human_duration(d: timedelta) -> str:
    """Upstream apimachinery `duration.HumanDuration`."""
    seconds = int(d.total_seconds())
    if seconds < -1:
        return "<invalid>"
    if seconds < 0:
        return "0s"
    if seconds < 60 * 2:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 10:
        s = seconds % 60
        return f"{minutes}m" if s == 0 else f"{minutes}m{s}s"
    if minutes < 60 * 3:
        return f"{minutes}m"
    hours = seconds // 3600
    if hours < 8:
        m = minutes % 60
        return f"{hours}h" if m == 0 else f"{hours}h{m}m"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        h = hours % 24
        return f"{hours // 24}d" if h == 0 else f"{hours // 24}d{h}h"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        dy = (hours // 24) % 365
        years = hours // 24 // 365
        return f"{years}y" if dy == 0 else f"{years}y{dy}d"
    return f"{hours // 24 // 365}y"


def _since(stamp: Any, now: datetime) -> str:
    """translateTimestampSince: `<unknown>` for a missing timestamp."""
    when = parse_rfc3339(stamp)
    return "<unknown>" if when is None else _since_time(when, now)


def _since_time(when: datetime, now: datetime) -> str:
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    return human_duration(now - when)


def _get(obj: Any, *path: str) -> Any:
    for key in path:
        obj = obj.get(key) if isinstance(obj, Mapping) else None
    return obj


def _object_at(obj: Obj, key: str) -> Obj:
    value = obj.get(key)
    return value if isinstance(value, dict) else {}


def _dicts(value: Any) -> list[Obj]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _strings(value: Any) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _age(obj: Obj, now: datetime) -> str:
    return _since(_get(obj, "metadata", "creationTimestamp"), now)


def _name(obj: Obj) -> str:
    return _str(_get(obj, "metadata", "name"))


def format_labels(labels: Any) -> str:
    """`k=v,...` sorted by key, `<none>` when empty (labels.FormatLabels)."""
    if not isinstance(labels, Mapping) or not labels:
        return "<none>"
    return ",".join(f"{k}={labels[k]}" for k in sorted(labels))


def _selector_string(sel: Any) -> str:
    try:
        return str(LabelSelector.from_spec(sel if isinstance(sel, dict) else None))
    except errors.ApiError:
        return "<invalid>"


def _more(items: list[str], total: int, limit: int = 3) -> str:
    text = ",".join(items[:limit])
    if total > limit:
        return f"{text} + {total - limit} more..."
    return text


_Column = tuple[str, str, str, int, str]  # name, type, format, priority, description
_Printer = Callable[[Obj, datetime], list[Any]]


def _col(
    name: str, description: str, type_: str = "string", priority: int = 0, format_: str = ""
) -> _Column:
    return (name, type_, format_, priority, description)


_NAME = _col(
    "Name",
    "Name must be unique within a namespace. Is required when creating "
    "resources, although some resources may allow a client to request the generation "
    "of an appropriate name automatically. Name is primarily intended for creation "
    "idempotence and configuration definition. Cannot be updated. More info: "
    "https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names",
    format_="name",
)
_AGE = _col(
    "Age",
    "CreationTimestamp is a timestamp representing the server time when this "
    "object was created. It is not guaranteed to be set in happens-before order across "
    "separate operations. Clients may not set this value. It is represented in RFC3339 "
    "form and is in UTC.",
)

# --- Pod -----------------------------------------------------------------------------------

_POD_COLUMNS = [
    _NAME,
    _col("Ready", "The aggregate readiness state of this pod for accepting traffic."),
    _col("Status", "The aggregate status of the containers in this pod."),
    _col(
        "Restarts",
        "The number of times the containers in this pod have been restarted and "
        "when the last container in this pod has restarted.",
    ),
    _AGE,
    _col("IP", "podIP is the IP address allocated to the pod.", priority=1),
    _col("Node", "NodeName indicates in which node this pod is scheduled.", priority=1),
    _col(
        "Nominated Node",
        "nominatedNodeName is set when this pod preempts other pods on the node.",
        priority=1,
    ),
    _col(
        "Readiness Gates",
        "If specified, all readiness gates will be evaluated for pod readiness.",
        priority=1,
    ),
]


def _restartable_init(spec_ctr: Obj | None) -> bool:
    return spec_ctr is not None and spec_ctr.get("restartPolicy") == "Always"


def pod_status_reason(pod: Obj) -> str:
    """The STATUS column of `kubectl get pods` (upstream printPod)."""
    return _pod_summary(pod, None)[1]


def _pod_summary(pod: Obj, now: datetime | None) -> tuple[str, str, str]:
    """(ready "n/m", status reason, restarts text) exactly as upstream printPod computes them."""
    spec, status = _object_at(pod, "spec"), _object_at(pod, "status")
    containers = _dicts(spec.get("containers"))
    init_specs = {_str(c.get("name")): c for c in _dicts(spec.get("initContainers"))}
    total = len(containers) + sum(1 for c in init_specs.values() if _restartable_init(c))
    ready = 0
    restarts = 0
    restartable_restarts = 0
    last_restart: datetime | None = None
    last_restartable_restart: datetime | None = None
    phase = _str(status.get("phase"))
    reason = _str(status.get("reason")) or phase
    for cond in _dicts(status.get("conditions")):
        if cond.get("type") == "PodScheduled" and cond.get("reason") == "SchedulingGated":
            reason = "SchedulingGated"

    def finished(cs: Obj) -> datetime | None:
        return parse_rfc3339(_get(cs, "lastState", "terminated", "finishedAt"))

    def later(a: datetime | None, b: datetime | None) -> datetime | None:
        if a is None:
            return b
        if b is None:
            return a
        return max(a, b)

    initializing = False
    init_statuses = _dicts(status.get("initContainerStatuses"))
    for i, cs in enumerate(init_statuses):
        restarts += _int(cs.get("restartCount"))
        last_restart = later(last_restart, finished(cs))
        spec_ctr = init_specs.get(_str(cs.get("name")))
        if _restartable_init(spec_ctr):
            restartable_restarts += _int(cs.get("restartCount"))
            last_restartable_restart = later(last_restartable_restart, finished(cs))
        terminated = _get(cs, "state", "terminated")
        waiting = _get(cs, "state", "waiting")
        if isinstance(terminated, dict) and _int(terminated.get("exitCode")) == 0:
            continue
        if _restartable_init(spec_ctr) and cs.get("started") is True:
            if cs.get("ready") is True:
                ready += 1
            continue
        if isinstance(terminated, dict):
            if not _str(terminated.get("reason")):
                if _int(terminated.get("signal")):
                    reason = f"Init:Signal:{_int(terminated.get('signal'))}"
                else:
                    reason = f"Init:ExitCode:{_int(terminated.get('exitCode'))}"
            else:
                reason = "Init:" + _str(terminated.get("reason"))
        elif (
            isinstance(waiting, dict)
            and _str(waiting.get("reason"))
            and waiting.get("reason") != "PodInitializing"
        ):
            reason = "Init:" + _str(waiting.get("reason"))
        else:
            reason = f"Init:{i}/{len(init_specs)}"
        initializing = True
        break

    initialized = any(
        c.get("type") == "Initialized" and c.get("status") == "True"
        for c in _dicts(status.get("conditions"))
    )
    if not initializing or initialized:
        restarts = restartable_restarts
        last_restart = last_restartable_restart
        has_running = False
        for cs in reversed(_dicts(status.get("containerStatuses"))):
            restarts += _int(cs.get("restartCount"))
            last_restart = later(last_restart, finished(cs))
            waiting = _get(cs, "state", "waiting")
            terminated = _get(cs, "state", "terminated")
            running = _get(cs, "state", "running")
            if isinstance(waiting, dict) and _str(waiting.get("reason")):
                reason = _str(waiting.get("reason"))
            elif isinstance(terminated, dict) and _str(terminated.get("reason")):
                reason = _str(terminated.get("reason"))
            elif isinstance(terminated, dict):
                if _int(terminated.get("signal")):
                    reason = f"Signal:{_int(terminated.get('signal'))}"
                else:
                    reason = f"ExitCode:{_int(terminated.get('exitCode'))}"
            elif cs.get("ready") is True and isinstance(running, dict):
                has_running = True
                ready += 1
        if reason == "Completed" and has_running:
            pod_ready = any(
                c.get("type") == "Ready" and c.get("status") == "True"
                for c in _dicts(status.get("conditions"))
            )
            reason = "Running" if pod_ready else "NotReady"

    deleting = _get(pod, "metadata", "deletionTimestamp") is not None
    if deleting and _str(status.get("reason")) == "NodeLost":
        reason = "Unknown"
    elif deleting and phase not in ("Succeeded", "Failed"):
        reason = "Terminating"

    restarts_text = str(restarts)
    if restarts and last_restart is not None and now is not None:
        restarts_text = f"{restarts} ({_since_time(last_restart, now)} ago)"
    return f"{ready}/{total}", reason, restarts_text


def _print_pod(pod: Obj, now: datetime) -> list[Any]:
    ready, reason, restarts = _pod_summary(pod, now)
    ips = _dicts(_get(pod, "status", "podIPs"))
    pod_ip = _str(ips[0].get("ip")) if ips else _str(_get(pod, "status", "podIP"))
    gates = _dicts(_get(pod, "spec", "readinessGates"))
    readiness = "<none>"
    if gates:
        conditions = {
            _str(c.get("type")): c.get("status") for c in _dicts(_get(pod, "status", "conditions"))
        }
        true_count = sum(1 for g in gates if conditions.get(_str(g.get("conditionType"))) == "True")
        readiness = f"{true_count}/{len(gates)}"
    return [
        _name(pod),
        ready,
        reason,
        restarts,
        _age(pod, now),
        pod_ip or "<none>",
        _str(_get(pod, "spec", "nodeName")) or "<none>",
        _str(_get(pod, "status", "nominatedNodeName")) or "<none>",
        readiness,
    ]


def _pod_conditions(pod: Obj) -> list[Obj] | None:
    phase = _get(pod, "status", "phase")
    if phase == "Succeeded":
        return [
            {
                "type": "Completed",
                "status": "True",
                "reason": "Succeeded",
                "message": "The pod has completed successfully.",
            }
        ]
    if phase == "Failed":
        return [
            {
                "type": "Completed",
                "status": "True",
                "reason": "Failed",
                "message": "The pod failed.",
            }
        ]
    return None


# --- Service -------------------------------------------------------------------------------

_SERVICE_COLUMNS = [
    _NAME,
    _col("Type", "type determines how the Service is exposed."),
    _col(
        "Cluster-IP", "clusterIP is the IP address of the service and is usually assigned randomly."
    ),
    _col(
        "External-IP",
        "externalIPs is a list of IP addresses for which nodes in the cluster "
        "will also accept traffic for this service.",
    ),
    _col("Port(s)", "The list of ports that are exposed by this service."),
    _AGE,
    _col(
        "Selector",
        "Route service traffic to pods with label keys and values matching this selector.",
        priority=1,
    ),
]


def _service_external_ip(svc: Obj) -> str:
    svc_type = _get(svc, "spec", "type")
    external = _strings(_get(svc, "spec", "externalIPs"))
    if svc_type in ("ClusterIP", "NodePort"):
        return ",".join(external) if external else "<none>"
    if svc_type == "LoadBalancer":
        ingress = _dicts(_get(svc, "status", "loadBalancer", "ingress"))
        lb = [_str(i.get("ip")) or _str(i.get("hostname")) for i in ingress]
        lb = [x for x in lb if x]
        if external:
            return ",".join(lb + external)
        return ",".join(lb) if lb else "<pending>"
    if svc_type == "ExternalName":
        return _str(_get(svc, "spec", "externalName"))
    return "<unknown>"


def _service_ports(ports: Any) -> str:
    pieces = []
    for p in _dicts(ports):
        protocol = _str(p.get("protocol"))
        if _int(p.get("nodePort")) > 0:
            pieces.append(f"{_int(p.get('port'))}:{_int(p.get('nodePort'))}/{protocol}")
        else:
            pieces.append(f"{_int(p.get('port'))}/{protocol}")
    return ",".join(pieces) or "<none>"


def _print_service(svc: Obj, now: datetime) -> list[Any]:
    cluster_ips = _get(svc, "spec", "clusterIPs")
    internal = "<none>"
    if isinstance(cluster_ips, list) and cluster_ips and isinstance(cluster_ips[0], str):
        internal = cluster_ips[0]
    elif _str(_get(svc, "spec", "clusterIP")):
        internal = _str(_get(svc, "spec", "clusterIP"))
    return [
        _name(svc),
        _str(_get(svc, "spec", "type")),
        internal,
        _service_external_ip(svc),
        _service_ports(_get(svc, "spec", "ports")),
        _age(svc, now),
        format_labels(_get(svc, "spec", "selector")),
    ]


# --- Deployment, ReplicaSet ----------------------------------------------------------------

_CONTAINERS = _col("Containers", "Names of each container in the template.", priority=1)
_IMAGES = _col("Images", "Images referenced by each container in the template.", priority=1)
_SELECTOR = _col(
    "Selector",
    "Label selector for pods. Existing ReplicaSets whose pods are "
    "selected by this will be the ones affected by this deployment.",
    priority=1,
)

_DEPLOYMENT_COLUMNS = [
    _NAME,
    _col("Ready", "Number of the pod with ready state"),
    _col(
        "Up-to-date",
        "Total number of non-terminated pods targeted by this deployment that "
        "have the desired template spec.",
        "integer",
    ),
    _col(
        "Available",
        "Total number of available pods (ready for at least minReadySeconds) "
        "targeted by this deployment.",
        "integer",
    ),
    _AGE,
    _CONTAINERS,
    _IMAGES,
    _SELECTOR,
]

_REPLICA_SET_COLUMNS = [
    _NAME,
    _col("Desired", "Replicas is the number of desired replicas.", "integer"),
    _col("Current", "Replicas is the most recently observed number of replicas.", "integer"),
    _col(
        "Ready",
        "readyReplicas is the number of pods targeted by this ReplicaSet with a Ready Condition.",
        "integer",
    ),
    _AGE,
    _CONTAINERS,
    _IMAGES,
    _SELECTOR,
]


def _template_cells(obj: Obj) -> list[str]:
    containers = _dicts(_get(obj, "spec", "template", "spec", "containers"))
    return [
        ",".join(_str(c.get("name")) for c in containers),
        ",".join(_str(c.get("image")) for c in containers),
        _selector_string(_get(obj, "spec", "selector")),
    ]


def _print_deployment(dep: Obj, now: datetime) -> list[Any]:
    desired = _get(dep, "spec", "replicas")
    desired = 1 if desired is None else _int(desired)
    status = _get(dep, "status")
    return [
        _name(dep),
        f"{_int(_get(status, 'readyReplicas'))}/{desired}",
        _int(_get(status, "updatedReplicas")),
        _int(_get(status, "availableReplicas")),
        _age(dep, now),
        *_template_cells(dep),
    ]


def _print_replica_set(rs: Obj, now: datetime) -> list[Any]:
    desired = _get(rs, "spec", "replicas")
    return [
        _name(rs),
        1 if desired is None else _int(desired),
        _int(_get(rs, "status", "replicas")),
        _int(_get(rs, "status", "readyReplicas")),
        _age(rs, now),
        *_template_cells(rs),
    ]


# --- Node ----------------------------------------------------------------------------------

_NODE_COLUMNS = [
    _NAME,
    _col("Status", "The status of the node"),
    _col("Roles", "The roles of the node"),
    _AGE,
    _col("Version", "Kubelet Version reported by the node."),
    _col("Internal-IP", "List of addresses reachable to the node.", priority=1),
    _col("External-IP", "List of addresses reachable to the node.", priority=1),
    _col(
        "OS-Image",
        "OS Image reported by the node from /etc/os-release (e.g. Debian GNU/Linux 7 (wheezy)).",
        priority=1,
    ),
    _col(
        "Kernel-Version",
        "Kernel Version reported by the node from 'uname -r' (e.g. 3.16.0-0.bpo.4-amd64).",
        priority=1,
    ),
    _col(
        "Container-Runtime",
        "ContainerRuntime Version reported by the node through runtime "
        "remote API (e.g. containerd://1.4.2).",
        priority=1,
    ),
]

_ROLE_PREFIX = "node-role.kubernetes.io/"


def node_roles(node: Obj) -> list[str]:
    roles: set[str] = set()
    labels = _get(node, "metadata", "labels")
    for k, v in labels.items() if isinstance(labels, Mapping) else []:
        if k.startswith(_ROLE_PREFIX) and k[len(_ROLE_PREFIX) :]:
            roles.add(k[len(_ROLE_PREFIX) :])
        elif k == "kubernetes.io/role" and isinstance(v, str) and v:
            roles.add(v)
    return sorted(roles)


def _node_address(node: Obj, kind: str) -> str:
    for addr in _dicts(_get(node, "status", "addresses")):
        if addr.get("type") == kind:
            return _str(addr.get("address"))
    return "<none>"


def _print_node(node: Obj, now: datetime) -> list[Any]:
    status: list[str] = []
    for cond in _dicts(_get(node, "status", "conditions")):
        if cond.get("type") == "Ready":
            status.append("Ready" if cond.get("status") == "True" else "NotReady")
            break
    if not status:
        status.append("Unknown")
    if _get(node, "spec", "unschedulable") is True:
        status.append("SchedulingDisabled")
    info = _get(node, "status", "nodeInfo")
    return [
        _name(node),
        ",".join(status),
        ",".join(node_roles(node)) or "<none>",
        _age(node, now),
        _str(_get(info, "kubeletVersion")),
        _node_address(node, "InternalIP"),
        _node_address(node, "ExternalIP"),
        _str(_get(info, "osImage")) or "<unknown>",
        _str(_get(info, "kernelVersion")) or "<unknown>",
        _str(_get(info, "containerRuntimeVersion")) or "<unknown>",
    ]


# --- Endpoints, EndpointSlice --------------------------------------------------------------

_ENDPOINTS_COLUMNS = [
    _NAME,
    _col("Endpoints", "Endpoints of the service"),
    _AGE,
]


def format_endpoints(ep: Obj) -> str:
    """`ip:port` pairs, at most three then `+ N more...` (upstream formatEndpoints)."""
    subsets = _dicts(ep.get("subsets"))
    if not subsets:
        return "<none>"
    shown: list[str] = []
    count = 0
    for ss in subsets:
        ips = [_str(a.get("ip")) for a in _dicts(ss.get("addresses"))]
        ports = _dicts(ss.get("ports"))
        if not ports:
            count += len(ips)
            shown += ips
            continue
        for port in ports:
            count += len(ips)
            for ip in ips:
                host = f"[{ip}]" if ":" in ip else ip
                shown.append(f"{host}:{_int(port.get('port'))}")
    return _more(shown, count) if count > 3 else ",".join(shown)


_ENDPOINT_SLICE_COLUMNS = [
    _NAME,
    _col("AddressType", "addressType specifies the type of address carried by this EndpointSlice."),
    _col(
        "Ports", "ports specifies the list of network ports exposed by each endpoint in this slice."
    ),
    _col("Endpoints", "endpoints is a list of unique endpoints in this slice."),
    _AGE,
]


def _list_or_unset(items: list[str]) -> str:
    text = _more(items, len(items))
    return text or "<unset>"


def _print_endpoint_slice(es: Obj, now: datetime) -> list[Any]:
    ports = []
    for p in _dicts(es.get("ports")):
        if _int(p.get("port")) or p.get("port") == 0:
            ports.append(str(_int(p.get("port"))))
        elif _str(p.get("name")):
            ports.append(_str(p.get("name")))
        else:
            ports.append("*")
    addresses = [a for ep in _dicts(es.get("endpoints")) for a in _strings(ep.get("addresses"))]
    return [
        _name(es),
        _str(es.get("addressType")),
        _list_or_unset(ports),
        _list_or_unset(addresses),
        _age(es, now),
    ]


# --- Namespace, Event, ConfigMap, Secret, ServiceAccount, Lease ----------------------------

_NAMESPACE_COLUMNS = [_NAME, _col("Status", "The status of the namespace"), _AGE]

_EVENT_COLUMNS = [
    _col("Last Seen", "The time since the event was last observed."),
    _col("Type", "Type of this event (Normal, Warning), new types could be added in the future."),
    _col(
        "Reason",
        "This should be a short, machine understandable string that gives the "
        "reason for this event being generated.",
    ),
    _col("Object", "The object this Event is about."),
    _col("Subobject", "The subobject (container) this Event is about.", priority=1),
    _col("Source", "The component reporting this event.", priority=1),
    _col("Message", "A human-readable description of the status of this operation."),
    _col("First Seen", "The time at which the event was first recorded.", priority=1),
    _col("Count", "The number of times this event has occurred.", priority=1),
    _col("Name", _NAME[4], priority=1, format_="name"),
]


def _print_event(ev: Obj, now: datetime) -> list[Any]:
    first_stamp = _get(ev, "firstTimestamp") or _get(ev, "eventTime")
    first = _since(first_stamp, now)
    last = _since(_get(ev, "lastTimestamp"), now) if _get(ev, "lastTimestamp") else first
    count = _int(ev.get("count"))
    series = ev.get("series")
    if isinstance(series, dict):
        last = _since(series.get("lastObservedTime"), now)
        count = _int(series.get("count"))
    elif count == 0:
        count = 1
    kind = _str(_get(ev, "involvedObject", "kind")).lower()
    involved_name = _str(_get(ev, "involvedObject", "name"))
    target = f"{kind}/{involved_name}" if involved_name else kind
    component = (
        _str(_get(ev, "source", "component"))
        or _str(ev.get("reportingComponent"))
        or _str(ev.get("reportingController"))
    )
    host = _str(_get(ev, "source", "host")) or _str(ev.get("reportingInstance"))
    source = f"{component}, {host}" if host else component
    return [
        last,
        _str(ev.get("type")),
        _str(ev.get("reason")),
        target,
        _str(_get(ev, "involvedObject", "fieldPath")),
        source,
        _str(ev.get("message")).strip(),
        first,
        count,
        _name(ev),
    ]


_CONFIG_MAP_COLUMNS = [
    _NAME,
    _col("Data", "Data contains the configuration data.", "integer"),
    _AGE,
]
_SECRET_COLUMNS = [
    _NAME,
    _col("Type", "Used to facilitate programmatic handling of secret data."),
    _col("Data", "Data contains the secret data.", "integer"),
    _AGE,
]
_SERVICE_ACCOUNT_COLUMNS = [
    _NAME,
    _col(
        "Secrets",
        "Secrets is a list of the secrets in the same namespace that pods running "
        "using this ServiceAccount are allowed to use.",
        "integer",
    ),
    _AGE,
]
_LEASE_COLUMNS = [
    _NAME,
    _col("Holder", "holderIdentity contains the identity of the holder of a current lease."),
    _AGE,
]
_NETWORK_POLICY_COLUMNS = [
    _NAME,
    _col(
        "Pod-Selector",
        "Selects the pods to which this NetworkPolicy object applies. The array of ingress "
        "rules is applied to any pods selected by this field. Multiple network policies can "
        "select the same set of pods. In this case, the ingress rules for each are combined "
        "additively. This field is NOT optional and follows standard label selector "
        "semantics. An empty podSelector matches all pods in this namespace.",
    ),
    _AGE,
]
_DEFAULT_COLUMNS = [_NAME, _AGE]


# --- DaemonSet, StatefulSet, ReplicationController, ControllerRevision ---------------------

_DAEMON_SET_COLUMNS = [
    _NAME,
    _col(
        "Desired",
        "The total number of nodes that should be running the daemon pod "
        "(including nodes correctly running the daemon pod).",
        "integer",
    ),
    _col(
        "Current",
        "The number of nodes that are running at least 1 daemon pod and are "
        "supposed to run the daemon pod.",
        "integer",
    ),
    _col(
        "Ready",
        "numberReady is the number of nodes that should be running the daemon pod and have "
        "one or more of the daemon pod running with a Ready Condition.",
        "integer",
    ),
    _col(
        "Up-to-date",
        "The total number of nodes that are running updated daemon pod",
        "integer",
    ),
    _col(
        "Available",
        "The number of nodes that should be running the daemon pod and have one or more of "
        "the daemon pod running and available (ready for at least spec.minReadySeconds)",
        "integer",
    ),
    _col(
        "Node Selector",
        "NodeSelector is a selector which must be true for the pod to fit on a node. "
        "Selector which must match a node's labels for the pod to be scheduled on that node.",
    ),
    _AGE,
    _CONTAINERS,
    _IMAGES,
    _SELECTOR,
]


def _print_daemon_set(ds: Obj, now: datetime) -> list[Any]:
    status = _get(ds, "status")
    return [
        _name(ds),
        _int(_get(status, "desiredNumberScheduled")),
        _int(_get(status, "currentNumberScheduled")),
        _int(_get(status, "numberReady")),
        _int(_get(status, "updatedNumberScheduled")),
        _int(_get(status, "numberAvailable")),
        format_labels(_get(ds, "spec", "template", "spec", "nodeSelector")),
        _age(ds, now),
        *_template_cells(ds),
    ]


_STATEFUL_SET_COLUMNS = [
    _NAME,
    _col("Ready", "Number of the pod with ready state"),
    _AGE,
    _CONTAINERS,
    _IMAGES,
]


def _print_stateful_set(ss: Obj, now: datetime) -> list[Any]:
    desired = _get(ss, "spec", "replicas")
    desired = 1 if desired is None else _int(desired)
    return [
        _name(ss),
        f"{_int(_get(ss, 'status', 'readyReplicas'))}/{desired}",
        _age(ss, now),
        *_template_cells(ss)[:2],
    ]


def _print_replication_controller(rc: Obj, now: datetime) -> list[Any]:
    """A ReplicaSet's row, but the SELECTOR column prints a map selector."""
    return [*_print_replica_set(rc, now)[:-1], format_labels(_get(rc, "spec", "selector"))]


_CONTROLLER_REVISION_COLUMNS = [
    _NAME,
    _col("Controller", "Controller of the object"),
    _col("Revision", "Revision indicates the revision of the state represented by Data."),
    _AGE,
]


def controller_name(obj: Obj) -> str:
    """`daemonset.apps/web` for the object's controller reference, `<none>` without one."""
    for ref in _dicts(_get(obj, "metadata", "ownerReferences")):
        if ref.get("controller") is True:
            api_version = _str(ref.get("apiVersion"))
            group = api_version.split("/")[0] if "/" in api_version else ""
            kind = _str(ref.get("kind")) + (f".{group}" if group else "")
            return f"{kind.lower()}/{_str(ref.get('name'))}"
    return "<none>"


def _print_controller_revision(cr: Obj, now: datetime) -> list[Any]:
    return [_name(cr), controller_name(cr), _int(cr.get("revision")), _age(cr, now)]


# --- Job, CronJob --------------------------------------------------------------------------

_JOB_COLUMNS = [
    _NAME,
    _col("Status", "Status of the job."),
    _col(
        "Completions",
        "Specifies the desired number of successfully finished pods the job should be run with.",
    ),
    _col("Duration", "Time required to complete the job."),
    _AGE,
    _CONTAINERS,
    _IMAGES,
    _col("Selector", "A label query over pods that should match the pod count.", priority=1),
]


def _has_condition(obj: Obj, ctype: str) -> bool:
    return any(
        c.get("type") == ctype and c.get("status") == "True"
        for c in _dicts(_get(obj, "status", "conditions"))
    )


def job_status_word(job: Obj) -> str:
    """The STATUS column of `kubectl get jobs` (upstream printJob)."""
    if _has_condition(job, "Complete"):
        return "Complete"
    if _has_condition(job, "Failed"):
        return "Failed"
    if _get(job, "metadata", "deletionTimestamp") is not None:
        return "Terminating"
    for ctype in ("Suspended", "FailureTarget", "SuccessCriteriaMet"):
        if _has_condition(job, ctype):
            return ctype
    return "Running"


def _print_job(job: Obj, now: datetime) -> list[Any]:
    succeeded = _int(_get(job, "status", "succeeded"))
    completions = _get(job, "spec", "completions")
    if completions is not None:
        done = f"{succeeded}/{_int(completions)}"
    else:
        parallelism = _int(_get(job, "spec", "parallelism"))
        done = f"{succeeded}/1 of {parallelism}" if parallelism > 1 else f"{succeeded}/1"
    started = parse_rfc3339(_get(job, "status", "startTime"))
    finished = parse_rfc3339(_get(job, "status", "completionTime"))
    duration = ""
    if started is not None:
        duration = human_duration((finished or now) - started)
    cells = _template_cells(job)
    return [_name(job), job_status_word(job), done, duration, _age(job, now), *cells]


_CRON_JOB_COLUMNS = [
    _NAME,
    _col("Schedule", "The schedule in Cron format, see https://en.wikipedia.org/wiki/Cron."),
    _col("Timezone", "The time zone name for the given schedule."),
    _col("Suspend", "This flag tells the controller to suspend subsequent executions."),
    _col("Active", "A list of pointers to currently running jobs.", "integer"),
    _col(
        "Last Schedule",
        "Information when was the last time the job was successfully scheduled.",
    ),
    _AGE,
    _CONTAINERS,
    _IMAGES,
    _col("Selector", "A label query over pods that should match the pod count.", priority=1),
]


def _bool_or_unset(value: Any) -> str:
    """printBoolPtr: `<unset>` for nil, else True/False."""
    if not isinstance(value, bool):
        return "<unset>"
    return "True" if value else "False"


def _print_cron_job(cj: Obj, now: datetime) -> list[Any]:
    job_spec = _object_at(_object_at(_object_at(cj, "spec"), "jobTemplate"), "spec")
    containers = _dicts(_get(job_spec, "template", "spec", "containers"))
    last = _get(cj, "status", "lastScheduleTime")
    return [
        _name(cj),
        _str(_get(cj, "spec", "schedule")),
        _str(_get(cj, "spec", "timeZone")) or "<none>",
        _bool_or_unset(_get(cj, "spec", "suspend")),
        len(_dicts(_get(cj, "status", "active"))),
        _since(last, now) if last else "<none>",
        _age(cj, now),
        ",".join(_str(c.get("name")) for c in containers),
        ",".join(_str(c.get("image")) for c in containers),
        format_label_selector(job_spec.get("selector")),
    ]


# --- core kinds stored without a controller of their own -----------------------------------

_CREATED_AT = _col(
    "Created At",
    "CreationTimestamp is a timestamp representing the server time when this object was created.",
    "date",
)


def _created_at(obj: Obj, now: datetime) -> list[Any]:
    """Name and creation time as RFC 3339 (upstream printRole / printLimitRange)."""
    when = parse_rfc3339(_get(obj, "metadata", "creationTimestamp"))
    return [_name(obj), rfc3339(when) if when else ""]


_PVC_COLUMNS = [
    _NAME,
    _col("Status", "The phase indicates if a volume is available, bound to a claim, or released"),
    _col("Volume", "The binding reference to the PersistentVolume backing this claim."),
    _col("Capacity", "The storage capacity of the volume bound to this claim."),
    _col("Access Modes", "AccessModes contains the desired access modes the volume should have."),
    _col("StorageClass", "StorageClass of the pvc"),
    _col("VolumeAttributesClass", "VolumeAttributesClass of the pvc"),
    _AGE,
    _col("VolumeMode", "VolumeMode of the pvc", priority=1),
]

_ACCESS_MODE_SHORT = {
    "ReadWriteOnce": "RWO",
    "ReadOnlyMany": "ROX",
    "ReadWriteMany": "RWX",
    "ReadWriteOncePod": "RWOP",
}


def _print_pvc(pvc: Obj, now: datetime) -> list[Any]:
    phase = _str(_get(pvc, "status", "phase"))
    if _get(pvc, "metadata", "deletionTimestamp") is not None:
        phase = "Terminating"
    volume = _str(_get(pvc, "spec", "volumeName"))
    capacity = access = ""
    if volume:
        capacity = _str(_get(pvc, "status", "capacity", "storage"))
        modes = _strings(_get(pvc, "status", "accessModes"))
        access = ",".join(_ACCESS_MODE_SHORT.get(m, m) for m in modes)
    annotations = _get(pvc, "metadata", "annotations")
    storage_class = _str(_get(annotations, "volume.beta.kubernetes.io/storage-class")) or _str(
        _get(pvc, "spec", "storageClassName")
    )
    return [
        _name(pvc),
        phase,
        volume,
        capacity,
        access,
        storage_class,
        _str(_get(pvc, "spec", "volumeAttributesClassName")) or "<unset>",
        _age(pvc, now),
        _str(_get(pvc, "spec", "volumeMode")) or "<unset>",
    ]


_RESOURCE_QUOTA_COLUMNS = [
    _NAME,
    _AGE,
    _col(
        "Request", "Request represents a minimum amount of cpu/memory that a container may consume."
    ),
    _col("Limit", "Limits control the maximum amount of cpu/memory that a container may use."),
]


def _print_resource_quota(quota: Obj, now: datetime) -> list[Any]:
    hard = _object_at(_object_at(quota, "spec"), "hard")
    used = _object_at(_object_at(quota, "status"), "used")
    requests: list[str] = []
    limits: list[str] = []
    for key in sorted(hard):
        text = f"{key}: {used.get(key, '0')}/{hard[key]}"
        (limits if key.startswith("limits.") else requests).append(text)
    return [_name(quota), _age(quota, now), ", ".join(requests), ", ".join(limits)]


# --- networking.k8s.io ---------------------------------------------------------------------

_INGRESS_COLUMNS = [
    _NAME,
    _col("Class", "The name of the IngressClass cluster resource."),
    _col("Hosts", "Hosts that incoming requests are matched against before the ingress rule"),
    _col("Address", "Address is a list containing ingress points for the load-balancer"),
    _col("Ports", "Ports of TLS configurations that open"),
    _AGE,
]


def _print_ingress(ing: Obj, now: datetime) -> list[Any]:
    hosts = [_str(r.get("host")) for r in _dicts(_get(ing, "spec", "rules")) if r.get("host")]
    points = _dicts(_get(ing, "status", "loadBalancer", "ingress"))
    addresses = [_str(p.get("ip")) or _str(p.get("hostname")) for p in points]
    address = ",".join(a for a in addresses if a)
    if len(address) > 16:
        address = address[:13] + "..."
    return [
        _name(ing),
        _str(_get(ing, "spec", "ingressClassName")) or "<none>",
        (_more(hosts, len(hosts)) if hosts else "*"),
        address,
        "80, 443" if _dicts(_get(ing, "spec", "tls")) else "80",
        _age(ing, now),
    ]


_INGRESS_CLASS_COLUMNS = [
    _NAME,
    _col("Controller", "Controller that is responsible for handling this class"),
    _col("Parameters", "A reference to a resource with additional parameters"),
    _AGE,
]


def _print_ingress_class(ic: Obj, now: datetime) -> list[Any]:
    params = _get(ic, "spec", "parameters")
    text = "<none>"
    if isinstance(params, dict):
        text = _str(params.get("kind"))
        if isinstance(params.get("apiGroup"), str):
            text += "." + params["apiGroup"]
        text += "/" + _str(params.get("name"))
    return [_name(ic), _str(_get(ic, "spec", "controller")), text, _age(ic, now)]


# --- policy, autoscaling, rbac, apiregistration --------------------------------------------

_PDB_COLUMNS = [
    _NAME,
    _col("Min Available", "The minimum number of pods that must be available simultaneously"),
    _col("Max Unavailable", "The maximum number of pods that may be unavailable simultaneously"),
    _col(
        "Allowed Disruptions",
        "Calculated number of pods that may be disrupted at this time",
        "integer",
    ),
    _AGE,
]


def _int_or_string(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "N/A"
    return str(value) if isinstance(value, int | str) else "N/A"


def _print_pdb(pdb: Obj, now: datetime) -> list[Any]:
    return [
        _name(pdb),
        _int_or_string(_get(pdb, "spec", "minAvailable")),
        _int_or_string(_get(pdb, "spec", "maxUnavailable")),
        _int(_get(pdb, "status", "disruptionsAllowed")),
        _age(pdb, now),
    ]


_HPA_COLUMNS = [
    _NAME,
    _col("Reference", "reference to scaled resource"),
    _col("Targets", "the current and target metrics"),
    _col("MinPods", "minReplicas is the lower limit for the number of replicas", "integer"),
    _col("MaxPods", "maxReplicas is the upper limit for the number of replicas", "integer"),
    _col("Replicas", "current number of replicas of pods managed by this autoscaler", "integer"),
    _AGE,
]


def _metric_text(spec: Obj, status: Obj | None) -> str:
    """One entry of upstream formatHPAMetrics (autoscaling/v2 shapes)."""
    kind = _str(spec.get("type"))
    source_key = {
        "Resource": "resource",
        "ContainerResource": "containerResource",
        "Pods": "pods",
        "Object": "object",
        "External": "external",
    }.get(kind)
    if source_key is None:
        return "<unknown type>"
    source = _object_at(spec, source_key)
    target = _object_at(source, "target")
    current = _object_at(_object_at(status or {}, source_key), "current")
    if kind in ("Resource", "ContainerResource"):
        prefix = f"{_str(source.get('name'))}: "
        if target.get("averageValue") is not None:
            now_text = str(current.get("averageValue") or "<unknown>")
            return f"{prefix}{now_text}/{target['averageValue']}"
        utilization = current.get("averageUtilization")
        now_text = f"{_int(utilization)}%" if utilization is not None else "<unknown>"
        want = target.get("averageUtilization")
        return f"{prefix}{now_text}/{f'{_int(want)}%' if want is not None else '<auto>'}"
    if kind == "Pods":
        return f"{current.get('averageValue') or '<unknown>'}/{target.get('averageValue')}"
    if target.get("averageValue") is not None:
        return f"{current.get('averageValue') or '<unknown>'}/{target['averageValue']} (avg)"
    return f"{current.get('value') or '<unknown>'}/{target.get('value')}"


def hpa_targets(hpa: Obj) -> str:
    specs = _dicts(_get(hpa, "spec", "metrics"))
    if not specs:
        return "<none>"
    statuses = _dicts(_get(hpa, "status", "currentMetrics"))
    texts = [
        _metric_text(spec, statuses[i] if i < len(statuses) else None)
        for i, spec in enumerate(specs)
    ]
    if len(texts) > 2:
        return f"{', '.join(texts[:2])} + {len(texts) - 2} more..."
    return ", ".join(texts)


def _print_hpa(hpa: Obj, now: datetime) -> list[Any]:
    ref = _get(hpa, "spec", "scaleTargetRef")
    min_pods = _get(hpa, "spec", "minReplicas")
    return [
        _name(hpa),
        f"{_str(_get(ref, 'kind'))}/{_str(_get(ref, 'name'))}",
        hpa_targets(hpa),
        "<unset>" if min_pods is None else _int(min_pods),
        _int(_get(hpa, "spec", "maxReplicas")),
        _int(_get(hpa, "status", "currentReplicas")),
        _age(hpa, now),
    ]


_ROLE_BINDING_COLUMNS = [
    _NAME,
    _col("Role", "Role of the binding"),
    _AGE,
    _col("Users", "Users in the binding", priority=1),
    _col("Groups", "Groups in the binding", priority=1),
    _col("ServiceAccounts", "ServiceAccounts in the binding", priority=1),
]


def _print_role_binding(binding: Obj, now: datetime) -> list[Any]:
    users: list[str] = []
    groups: list[str] = []
    accounts: list[str] = []
    for subject in _dicts(binding.get("subjects")):
        kind, name = _str(subject.get("kind")), _str(subject.get("name"))
        if kind == "User":
            users.append(name)
        elif kind == "Group":
            groups.append(name)
        elif kind == "ServiceAccount":
            accounts.append(f"{_str(subject.get('namespace'))}/{name}")
    ref = _object_at(binding, "roleRef")
    return [
        _name(binding),
        f"{_str(ref.get('kind'))}/{_str(ref.get('name'))}",
        _age(binding, now),
        ", ".join(users),
        ", ".join(groups),
        ", ".join(accounts),
    ]


_API_SERVICE_COLUMNS = [
    _NAME,
    _col("Service", "The reference to the service that hosts this API endpoint."),
    _col("Available", "Whether this service is available."),
    _AGE,
]


def _print_api_service(svc: Obj, now: datetime) -> list[Any]:
    ref = _get(svc, "spec", "service")
    service = "Local"
    if isinstance(ref, dict):
        service = f"{_str(ref.get('namespace'))}/{_str(ref.get('name'))}"
    available = "Unknown"
    for cond in _dicts(_get(svc, "status", "conditions")):
        if cond.get("type") == "Available":
            available = _str(cond.get("status"))
            if available != "True":
                available = f"{available} ({_str(cond.get('reason'))})"
    return [_name(svc), service, available, _age(svc, now)]


def format_label_selector(sel: Any) -> str:
    """metav1.FormatLabelSelector: the selector's text, `<none>` when it selects everything."""
    return _selector_string(sel if isinstance(sel, dict) else {}) or "<none>"


def _count(value: Any) -> int:
    return len(value) if isinstance(value, dict | list) else 0


_PRINTERS: dict[str, tuple[list[_Column], _Printer]] = {
    "Pod": (_POD_COLUMNS, _print_pod),
    "Service": (_SERVICE_COLUMNS, _print_service),
    "Deployment": (_DEPLOYMENT_COLUMNS, _print_deployment),
    "ReplicaSet": (_REPLICA_SET_COLUMNS, _print_replica_set),
    "Node": (_NODE_COLUMNS, _print_node),
    "Endpoints": (_ENDPOINTS_COLUMNS, lambda o, now: [_name(o), format_endpoints(o), _age(o, now)]),
    "EndpointSlice": (_ENDPOINT_SLICE_COLUMNS, _print_endpoint_slice),
    "Namespace": (
        _NAMESPACE_COLUMNS,
        lambda o, now: [_name(o), _str(_get(o, "status", "phase")), _age(o, now)],
    ),
    "Event": (_EVENT_COLUMNS, _print_event),
    "ConfigMap": (
        _CONFIG_MAP_COLUMNS,
        lambda o, now: [
            _name(o),
            _count(o.get("data")) + _count(o.get("binaryData")),
            _age(o, now),
        ],
    ),
    "Secret": (
        _SECRET_COLUMNS,
        lambda o, now: [_name(o), _str(o.get("type")), _count(o.get("data")), _age(o, now)],
    ),
    "ServiceAccount": (
        _SERVICE_ACCOUNT_COLUMNS,
        lambda o, now: [_name(o), _count(o.get("secrets")), _age(o, now)],
    ),
    "NetworkPolicy": (
        _NETWORK_POLICY_COLUMNS,
        lambda o, now: [
            _name(o),
            format_label_selector(_get(o, "spec", "podSelector")),
            _age(o, now),
        ],
    ),
    "Lease": (
        _LEASE_COLUMNS,
        lambda o, now: [_name(o), _str(_get(o, "spec", "holderIdentity")), _age(o, now)],
    ),
    "DaemonSet": (_DAEMON_SET_COLUMNS, _print_daemon_set),
    "StatefulSet": (_STATEFUL_SET_COLUMNS, _print_stateful_set),
    "ReplicationController": (_REPLICA_SET_COLUMNS, _print_replication_controller),
    "ControllerRevision": (_CONTROLLER_REVISION_COLUMNS, _print_controller_revision),
    "Job": (_JOB_COLUMNS, _print_job),
    "CronJob": (_CRON_JOB_COLUMNS, _print_cron_job),
    "PersistentVolumeClaim": (_PVC_COLUMNS, _print_pvc),
    "LimitRange": ([_NAME, _CREATED_AT], _created_at),
    "ResourceQuota": (_RESOURCE_QUOTA_COLUMNS, _print_resource_quota),
    "Ingress": (_INGRESS_COLUMNS, _print_ingress),
    "IngressClass": (_INGRESS_CLASS_COLUMNS, _print_ingress_class),
    "PodDisruptionBudget": (_PDB_COLUMNS, _print_pdb),
    "HorizontalPodAutoscaler": (_HPA_COLUMNS, _print_hpa),
    "Role": ([_NAME, _CREATED_AT], _created_at),
    "ClusterRole": ([_NAME, _CREATED_AT], _created_at),
    "RoleBinding": (_ROLE_BINDING_COLUMNS, _print_role_binding),
    "ClusterRoleBinding": (_ROLE_BINDING_COLUMNS, _print_role_binding),
    "APIService": (_API_SERVICE_COLUMNS, _print_api_service),
}


# --- the Table -----------------------------------------------------------------------------


def column_definitions(res: Resource) -> list[Obj]:
    columns = _PRINTERS.get(res.kind, (_DEFAULT_COLUMNS, None))[0]
    return [
        {"name": n, "type": t, "format": f, "description": d, "priority": p}
        for n, t, f, p, d in columns
    ]


def _partial_metadata(obj: Obj) -> Obj:
    md = obj.get("metadata")
    return {
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": md if isinstance(md, dict) else {},
    }


def to_table(
    res: Resource, objs: list[Obj], now: datetime, include_object: str = "Metadata"
) -> Obj:
    """A meta.k8s.io/v1 Table of `objs`. The caller sets `metadata.resourceVersion` (and
    `continue`) from the list it printed."""
    if include_object not in INCLUDE_OBJECT_POLICIES:
        raise errors.bad_request(
            f"includeObject must be one of {', '.join(INCLUDE_OBJECT_POLICIES)}, "
            f"not {include_object!r}"
        )
    entry = _PRINTERS.get(res.kind)
    rows: list[Obj] = []
    for obj in objs:
        cells = entry[1](obj, now) if entry else [_name(obj), _age(obj, now)]
        row: Obj = {"cells": cells}
        if res.kind == "Pod":
            conditions = _pod_conditions(obj)
            if conditions:
                row["conditions"] = conditions
        if include_object == "Metadata":
            row["object"] = _partial_metadata(obj)
        elif include_object == "Object":
            row["object"] = obj
        rows.append(row)
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {},
        "columnDefinitions": column_definitions(res),
        "rows": rows,
    }
