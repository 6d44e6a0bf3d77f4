"""`podspec.py`: a pod's container as the runtime's `ContainerConfig`, and its probes (pure)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from podnet.agent.kubelet.cri import ContainerConfig
from podnet.agent.kubelet.podspec import (
    container_config,
    container_env,
    container_probes,
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
            {"name": "SECRET", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
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
        ("SECRET", ""),  # not served by podnet
    )


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
