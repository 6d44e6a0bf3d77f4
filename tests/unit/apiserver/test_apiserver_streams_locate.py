"""Pure parts of the streaming relays: which container, which agent endpoint."""

from __future__ import annotations

import pytest

from podnet.api.errors import ApiError
from podnet.apiserver.streams.locate import AgentEndpoint, choose_container, node_endpoint

POD = {
    "metadata": {"name": "web", "annotations": {}},
    "spec": {
        "initContainers": [{"name": "init"}],
        "containers": [{"name": "app"}, {"name": "sidecar"}],
    },
}


def test_choose_container() -> None:
    assert choose_container(POD, None) == "app"
    assert choose_container(POD, "sidecar") == "sidecar"
    assert choose_container(POD, "init") == "init"
    annotated = {
        **POD,
        "metadata": {
            "name": "web",
            "annotations": {"kubectl.kubernetes.io/default-container": "sidecar"},
        },
    }
    assert choose_container(annotated, None) == "sidecar"
    with pytest.raises(ApiError) as info:
        choose_container(POD, "nope")
    assert info.value.code == 400
    assert info.value.message == "container nope is not valid for pod web"


def test_node_endpoint() -> None:
    node = {
        "metadata": {"name": "n1"},
        "status": {
            "addresses": [
                {"type": "Hostname", "address": "n1"},
                {"type": "InternalIP", "address": "172.31.0.11"},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10555}},
        },
    }
    assert node_endpoint(node) == AgentEndpoint("n1", "172.31.0.11", 10555)
    del node["status"]["daemonEndpoints"]
    assert node_endpoint(node) == AgentEndpoint("n1", "172.31.0.11", 10250)
    with pytest.raises(ApiError) as info:
        node_endpoint({"metadata": {"name": "bare"}, "status": {}})
    assert info.value.code == 503 and "agent" in info.value.message
