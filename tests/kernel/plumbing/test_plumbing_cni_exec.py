"""`podnet cni` as a CNI-spec executable: env + stdin in, JSON out, run as a subprocess inside
a throwaway node namespace (as a container runtime would run it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from podnet.kernel import netns
from podnet.kernel.links import Netlink

pytestmark = pytest.mark.root

# the plugin module alone (`podnet cni` runs the same `main`), so this test does not depend
# on every other sub-command importing cleanly
PLUGIN = [sys.executable, "-m", "podnet.cli.cni"]


def netconf(data_dir: Path, version: str = "0.3.1") -> str:
    return json.dumps(
        {
            "cniVersion": version,
            "name": "cbr0",
            "type": "podnet-bridge",
            "bridge": "pt1cni0",
            "hairpinMode": True,
            "isDefaultGateway": True,
            "mtu": 1450,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": "10.244.5.0/24"}]],
                "routes": [{"dst": "10.244.0.0/16"}],
                "dataDir": str(data_dir),
            },
        }
    )


def invoke(node: str, command: str, stdin: str, **env: str) -> tuple[int, Any]:
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    full_env = {**inherited, "CNI_COMMAND": command, "CNI_IFNAME": "eth0", **env}

    def execute() -> tuple[int, str]:
        done = subprocess.run(
            PLUGIN,
            input=stdin,
            env=full_env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        return done.returncode, done.stdout

    code, out = netns.call_in(node, execute)
    return code, json.loads(out) if out.strip() else None


def test_add_check_del_through_the_executable(new_netns: Callable[[], str], tmp_path: Path) -> None:
    node, pod = new_netns(), new_netns()
    pod_path = str(netns.path(pod))
    conf = netconf(tmp_path)

    code, result = invoke(node, "ADD", conf, CNI_CONTAINERID="ctr1", CNI_NETNS=pod_path)
    assert code == 0, result
    assert result["cniVersion"] == "0.3.1"
    assert result["ips"] == [
        {"version": "4", "interface": 2, "address": "10.244.5.2/24", "gateway": "10.244.5.1"}
    ]
    assert result["routes"] == [{"dst": "10.244.0.0/16"}, {"dst": "0.0.0.0/0", "gw": "10.244.5.1"}]
    assert [i["name"] for i in result["interfaces"]][::2] == ["pt1cni0", "eth0"]
    assert result["interfaces"][2]["sandbox"] == pod_path
    with Netlink(pod) as inside:
        assert [a.cidr for a in inside.addresses("eth0")] == ["10.244.5.2/24"]

    check_conf = netconf(tmp_path, "1.0.0")
    assert invoke(node, "CHECK", check_conf, CNI_CONTAINERID="ctr1", CNI_NETNS=pod_path) == (
        0,
        None,
    )

    assert invoke(node, "DEL", conf, CNI_CONTAINERID="ctr1", CNI_NETNS=pod_path) == (0, None)
    assert invoke(node, "DEL", conf, CNI_CONTAINERID="ctr1") == (0, None)  # again, no netns
    assert not (tmp_path / "cbr0" / "10.244.5.2").exists()


def test_errors_are_cni_error_objects_with_exit_1(
    new_netns: Callable[[], str], tmp_path: Path
) -> None:
    node = new_netns()
    code, error = invoke(node, "ADD", netconf(tmp_path), CNI_CONTAINERID="ctr1")
    assert code == 1
    assert error == {
        "cniVersion": "0.3.1",
        "code": 4,
        "msg": "required env variables ['CNI_NETNS'] missing",
    }
    code, error = invoke(node, "ADD", "{not json", CNI_CONTAINERID="c", CNI_NETNS="/x")
    assert (code, error["code"]) == (1, 6)
    code, error = invoke(
        node, "ADD", netconf(tmp_path, "9.9.9"), CNI_CONTAINERID="c", CNI_NETNS="/x"
    )
    assert (code, error["code"]) == (1, 1)
    code, error = invoke(
        node, "ADD", netconf(tmp_path), CNI_CONTAINERID="c", CNI_NETNS="/run/netns/pnt1-none"
    )
    assert (code, error["code"]) == (1, 3)
    assert "does not exist" in error["msg"]


def test_version_command(new_netns: Callable[[], str]) -> None:
    code, out = invoke(new_netns(), "VERSION", '{"cniVersion": "1.0.0"}')
    assert code == 0
    assert out == {
        "cniVersion": "1.0.0",
        "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"],
    }
