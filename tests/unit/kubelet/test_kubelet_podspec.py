"""`podspec.py`: a pod's container as the runtime's `ContainerConfig`, and its probes (pure)."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest

from podnet.agent.kubelet.cri import ContainerConfig
from podnet.agent.kubelet.podspec import (
    EnvSourceError,
    EnvSources,
    container_config,
    container_env,
    container_probes,
    env_needs,
    service_env,
)
from podnet.agent.kubelet.probes import LIVENESS, READINESS, STARTUP, ProbeSpec
from podnet.agent.kubelet.services import ServiceLister, slim_service
from podnet.agent.kubelet.volumes import HostMount

POD: dict[str, Any] = {
    "metadata": {"name": "web", "namespace": "team", "uid": "u1", "labels": {"app": "x"}},
    "spec": {
        "nodeName": "node1",
        "volumes": [{"name": "conf", "hostPath": {"path": "/etc/podnet", "type": "Directory"}}],
    },
    "status": {"podIP": "10.244.0.5", "hostIP": "172.31.0.11"},
}


def test_env_resolves_field_refs_after_service_variables() -> None:
    container = {
        "env": [
            {"name": "A", "value": "1"},
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "NOTE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.annotations['n']"}}},
            {"name": "KUBERNETES_SERVICE_HOST", "value": "override"},
        ]
    }
    env = container_env(container, POD, {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "Z": "z"})
    assert env == (
        ("KUBERNETES_SERVICE_HOST", "override"),
        ("Z", "z"),
        ("A", "1"),
        ("POD", "web"),
        ("IP", "10.244.0.5"),
        ("APP", "x"),
        ("NOTE", ""),  # no such annotation
    )


# The ConfigMap and Secret of the Kubernetes docs' "Configure a Pod to Use a ConfigMap" and
# "Distribute Credentials Securely Using Secrets" pages.
GAME = {
    "metadata": {"name": "game-demo", "namespace": "team"},
    "data": {
        "player_initial_lives": "3",
        "ui_properties_file_name": "user-interface.properties",
        "game.properties": "enemy.types=aliens,monsters\n",
        "bad=name": "skipped",
    },
    "binaryData": {"blob": "AAE="},
}
SECRET = {
    "metadata": {"name": "mysecret", "namespace": "team"},
    "data": {"username": "YWRtaW4=", "password": "MWYyZDFlMmU2N2Rm"},
}
SOURCES = EnvSources(
    configmaps={"game-demo": GAME, "gone": None},
    secrets={"mysecret": SECRET, "nosecret": None},
    allocatable={"cpu": "2", "memory": "24576000Ki"},
)


def test_env_reads_config_maps_and_secrets_by_key_and_whole() -> None:
    container = {
        "name": "demo",
        "envFrom": [
            {"configMapRef": {"name": "game-demo"}},
            {"secretRef": {"name": "mysecret"}, "prefix": "DB_"},
            {"configMapRef": {"name": "gone", "optional": True}},
        ],
        "env": [
            {
                "name": "PLAYER_INITIAL_LIVES",
                "valueFrom": {
                    "configMapKeyRef": {"name": "game-demo", "key": "player_initial_lives"}
                },
            },
            {
                "name": "USER",
                "valueFrom": {"secretKeyRef": {"name": "mysecret", "key": "username"}},
            },
            {
                "name": "MAYBE",
                "valueFrom": {"secretKeyRef": {"name": "nosecret", "key": "k", "optional": True}},
            },
            {
                "name": "NOKEY",
                "valueFrom": {
                    "configMapKeyRef": {"name": "game-demo", "key": "absent", "optional": True}
                },
            },
            {"name": "player_initial_lives", "value": "9"},
        ],
    }
    assert container_env(container, POD, {"Z": "z"}, SOURCES) == (
        ("Z", "z"),
        ("player_initial_lives", "9"),  # env wins over envFrom
        ("ui_properties_file_name", "user-interface.properties"),
        ("game.properties", "enemy.types=aliens,monsters\n"),
        ("DB_username", "admin"),
        ("DB_password", "1f2d1e2e67df"),
        ("PLAYER_INITIAL_LIVES", "3"),
        ("USER", "admin"),
    )  # "bad=name" cannot be a variable, binaryData is not env; the optional misses set nothing


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ({"configMapKeyRef": {"name": "gone", "key": "k"}}, 'configmap "gone" not found'),
        ({"secretKeyRef": {"name": "nosecret", "key": "k"}}, 'secret "nosecret" not found'),
        (
            {"configMapKeyRef": {"name": "game-demo", "key": "blob"}},
            "couldn't find key blob in ConfigMap team/game-demo",
        ),
        (
            {"secretKeyRef": {"name": "mysecret", "key": "token"}},
            "couldn't find key token in Secret team/mysecret",
        ),
    ],
)
def test_a_missing_env_source_is_upstreams_create_container_config_error(
    source: dict[str, Any], message: str
) -> None:
    container = {"name": "demo", "env": [{"name": "X", "valueFrom": source}]}
    with pytest.raises(EnvSourceError, match=f"^{re.escape(message)}$"):
        container_env(container, POD, {}, SOURCES)
    from_all = {"name": "demo", "envFrom": [{"configMapRef": {"name": "gone"}}]}
    with pytest.raises(EnvSourceError, match=r'^configmap "gone" not found$'):
        container_config(from_all, POD, {}, "", SOURCES)


def test_env_resource_field_refs_round_up_in_divisor_units() -> None:
    def ref(resource: str, divisor: str | None = None, container: str | None = None) -> Any:
        body: dict[str, Any] = {"resource": resource}
        if divisor:
            body["divisor"] = divisor
        if container:
            body["containerName"] = container
        return {"resourceFieldRef": body}

    pod = copy.deepcopy(POD)
    pod["spec"]["containers"] = [
        {"name": "side", "resources": {"limits": {"memory": "64Mi"}}},
    ]
    container = {
        "name": "demo",
        "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"cpu": "500m"}},
        "env": [
            {"name": "CPU_LIMIT", "valueFrom": ref("limits.cpu")},
            {"name": "CPU_LIMIT_M", "valueFrom": ref("limits.cpu", "1m")},
            {"name": "CPU_REQUEST_M", "valueFrom": ref("requests.cpu", "1m")},
            {"name": "MEM_REQUEST_MI", "valueFrom": ref("requests.memory", "1Mi")},
            {"name": "MEM_LIMIT", "valueFrom": ref("limits.memory")},  # unset: allocatable
            {"name": "SIDE_MEM_MI", "valueFrom": ref("limits.memory", "1Mi", "side")},
            {"name": "EPHEMERAL", "valueFrom": ref("requests.ephemeral-storage")},  # unset: 0
        ],
    }
    assert dict(container_env(container, pod, {}, SOURCES)) == {
        "CPU_LIMIT": "1",
        "CPU_LIMIT_M": "500",
        "CPU_REQUEST_M": "100",
        "MEM_REQUEST_MI": "64",
        "MEM_LIMIT": str(24576000 * 1024),
        "SIDE_MEM_MI": "64",
        "EPHEMERAL": "0",
    }


def test_env_needs_names_every_config_map_and_secret_the_env_reads() -> None:
    container = {
        "envFrom": [{"configMapRef": {"name": "a"}}, {"secretRef": {"name": "s1"}}],
        "env": [
            {"name": "X", "valueFrom": {"configMapKeyRef": {"name": "b", "key": "k"}}},
            {"name": "Y", "valueFrom": {"secretKeyRef": {"name": "s2", "key": "k"}}},
            {"name": "Z", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        ],
    }
    assert env_needs(container) == (frozenset({"a", "b"}), frozenset({"s1", "s2"}))


def test_container_config_is_what_the_runtime_is_asked_to_run() -> None:
    container = {
        "name": "app",
        "image": "busybox",
        "command": ["sh", "-c"],
        "args": ["echo $(A)", 7],
        "env": [{"name": "A", "value": "1"}],
        "workingDir": "/srv",
        "stdin": True,
        "stdinOnce": True,
        "tty": True,
        "volumeMounts": [{"name": "conf", "mountPath": "/conf", "readOnly": True}],
    }
    kubernetes = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    assert container_config(container, POD, kubernetes, "/v") == ContainerConfig(
        name="app",
        image="busybox",
        command=("sh", "-c"),
        args=("echo $(A)", "7"),  # `$(VAR)` is expanded by the runtime, against the image env
        env=(
            ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
            ("KUBERNETES_SERVICE_PORT", "443"),
            ("A", "1"),
        ),
        working_dir="/srv",
        tty=True,
        stdin=True,
        stdin_once=True,
        mounts=(HostMount("/etc/podnet", "/conf", True),),
    )


def service(namespace: str, name: str, ip: str, *ports: dict[str, Any]) -> dict[str, Any]:
    return {
        "metadata": {"namespace": namespace, "name": name},
        "spec": {"clusterIP": ip, "ports": list(ports)},
    }


KUBERNETES = service("default", "kubernetes", "10.96.0.1", {"name": "https", "port": 443})
SERVICES = [
    KUBERNETES,
    service("team", "web-api", "10.96.4.7", {"port": 80},
            {"name": "dns-udp", "port": 53, "protocol": "UDP"}),
    service("team", "headless", "None", {"port": 80}),
    service("other", "elsewhere", "10.96.9.9", {"port": 80}),
]  # fmt: skip


def test_service_variables_are_the_kubelets() -> None:
    """Upstream's names and values (`envvars.FromServices`): host, first port, named ports and
    docker links, for the `kubernetes` Service and the Services of the pod's namespace."""
    assert service_env(SERVICES, "team") == {
        "KUBERNETES_SERVICE_HOST": "10.96.0.1",
        "KUBERNETES_SERVICE_PORT": "443",
        "KUBERNETES_SERVICE_PORT_HTTPS": "443",
        "KUBERNETES_PORT": "tcp://10.96.0.1:443",
        "KUBERNETES_PORT_443_TCP": "tcp://10.96.0.1:443",
        "KUBERNETES_PORT_443_TCP_PROTO": "tcp",
        "KUBERNETES_PORT_443_TCP_PORT": "443",
        "KUBERNETES_PORT_443_TCP_ADDR": "10.96.0.1",
        "WEB_API_SERVICE_HOST": "10.96.4.7",
        "WEB_API_SERVICE_PORT": "80",
        "WEB_API_SERVICE_PORT_DNS_UDP": "53",
        "WEB_API_PORT": "tcp://10.96.4.7:80",
        "WEB_API_PORT_80_TCP": "tcp://10.96.4.7:80",
        "WEB_API_PORT_80_TCP_PROTO": "tcp",
        "WEB_API_PORT_80_TCP_PORT": "80",
        "WEB_API_PORT_80_TCP_ADDR": "10.96.4.7",
        "WEB_API_PORT_53_UDP": "udp://10.96.4.7:53",
        "WEB_API_PORT_53_UDP_PROTO": "udp",
        "WEB_API_PORT_53_UDP_PORT": "53",
        "WEB_API_PORT_53_UDP_ADDR": "10.96.4.7",
    }
    # enableServiceLinks: false keeps only the kubernetes Service
    assert set(service_env(SERVICES, "team", enable_service_links=False)) == {
        k for k in service_env(SERVICES, "team") if k.startswith("KUBERNETES_")
    }
    # a Service named kubernetes in the pod's own namespace wins over default's
    own = service("team", "kubernetes", "10.96.3.3", {"port": 8443})
    assert service_env([KUBERNETES, own], "team")["KUBERNETES_SERVICE_HOST"] == "10.96.3.3"
    assert service_env([own, KUBERNETES], "team")["KUBERNETES_SERVICE_HOST"] == "10.96.3.3"


def test_the_lister_keeps_what_the_variables_are_made_of() -> None:
    """The ServiceLister keeps slim Services (`slim_service`); the variables are the same as
    from whole ones, with everything else a Service carries dropped."""
    whole = []
    for svc in SERVICES:
        svc = copy.deepcopy(svc)
        svc["metadata"].update(uid="u", labels={"a": "b"}, managedFields=[{"manager": "m"}])
        svc["spec"].update(selector={"app": "x"}, type="ClusterIP", clusterIPs=["1.2.3.4"])
        for port in svc["spec"]["ports"]:
            port["targetPort"] = 8080
        svc["status"] = {"loadBalancer": {}}
        whole.append(svc)
    lister = ServiceLister()
    lister.replace([slim_service(svc) for svc in whole[:2]])  # the first list, transformed
    for svc in whole[2:]:
        lister.apply("ADDED", svc)  # watch events arrive whole
    for namespace in ("team", "other", "default"):
        for links in (True, False):
            assert lister.env_for(namespace, links) == service_env(whole, namespace, links)
    kept = lister.by_namespace["team"]["web-api"]
    assert kept == {
        "metadata": {"namespace": "team", "name": "web-api"},
        "spec": {"clusterIP": "10.96.4.7", "ports": [
            {"port": 80}, {"name": "dns-udp", "port": 53, "protocol": "UDP"},
        ]},
    }  # fmt: skip


def test_a_bare_container_gets_the_defaults() -> None:
    config = container_config({"name": "app", "image": "busybox"}, POD, {})
    assert config == ContainerConfig(name="app", image="busybox")


def test_probes_are_read_and_bad_ones_refused() -> None:
    container = {
        "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}, "periodSeconds": 1},
        "livenessProbe": {"exec": {"command": ["true"]}},
    }
    probes = container_probes(container)
    assert probes[STARTUP] is None
    assert probes[READINESS] == ProbeSpec.from_spec(container["readinessProbe"])
    assert isinstance(probes[LIVENESS], ProbeSpec) and probes[LIVENESS].handler == "exec"
    with pytest.raises(ValueError, match="container 'app': readinessProbe: probe has none of"):
        container_probes({"name": "app", "readinessProbe": {"periodSeconds": 1}})
