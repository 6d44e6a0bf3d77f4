"""`podnet demo` end to end, non-interactively: the story's key claims must hold on a live lab.

Marks: root + slow. The demo's lab is always taken down, and the test checks nothing is left.
"""

from __future__ import annotations

import io
import secrets

import pytest
from rich.console import Console

from podnet.agent.proxy.ipvs import ipvs_available
from podnet.demo.story import DemoOptions, Story, summarize, vm_unavailable
from podnet.kernel import netns

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.timeout(900)]


def test_demo_tells_the_story() -> None:
    name = f"tdemo{secrets.token_hex(2)}"
    out = io.StringIO()
    console = Console(file=out, width=120, force_terminal=False)
    story = Story(DemoOptions(name=name), console)
    try:
        result = story.run()
        all_held = summarize(result, console)
    finally:
        story.tear_down()
    transcript = out.getvalue()
    assert all_held, transcript
    # the explainer's own commands print what the explainer says they print
    assert result.jsonpath == (
        "registry.k8s.io/e2e-test-images/agnhost:2.52 busybox web sidecar"
    ), transcript
    assert result.exec_hostname == "twins"
    # podnet trace followed alpha → gamma, and the kernels agreed through the ClusterIP
    assert result.trace_cross_node and result.trace_cluster_ip, transcript
    # round robin saw every endpoint; affinity stuck to one
    assert set(result.round_robin) == {r for r in result.round_robin if r.startswith("hostnames-")}
    assert len(result.round_robin) == 3, result.round_robin
    assert len(result.affinity) == 1 and sum(result.affinity.values()) == 15
    # the Service survived the pod's death, and the replacement has a new IP
    assert result.survival_failures == 0 and result.survival_requests > 0
    assert result.replacement_pod[1] not in ("", result.killed_pod[1])
    # the endpoints followed: the replacement in, the dead pod out, still three
    assert result.replacement_pod[1] in result.endpoints_after, result.endpoints_after
    assert result.killed_pod[1] not in result.endpoints_after
    assert len(result.endpoints_after) == 3, result.endpoints_after
    # every mode this kernel supports served the Service; ipvs (this kernel has no IP_VS) ran on
    # a VM node where one can boot, else it was refused with the reason
    for mode in ("userspace", "iptables", "nftables"):
        assert result.modes[mode].startswith("ok: 3 pods answered"), result.modes
    if ipvs_available():
        assert result.modes["ipvs"].startswith("ok: 3 pods answered"), result.modes
    elif vm_unavailable() is None:
        assert result.modes["ipvs"] == "ok: 3 pods answered, 0 failures (on VM node3)", transcript
    else:
        assert "IP Virtual Server" in result.modes["ipvs"], result.modes
    assert not netns.list_names(f"podnet-{name}-")
