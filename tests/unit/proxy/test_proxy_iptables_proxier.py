"""The iptables proxier's syncs against the recording `FakeIptables`: what it keeps between
syncs (no rule text of Services it does not write) and that its restore inputs are the
renderer's, full and partial."""

from __future__ import annotations

from podnet.agent.proxy import iptables as ipt
from podnet.agent.proxy.config import ProxyConfig
from podnet.agent.proxy.modes import IptablesProxier, ProxyKernel
from podnet.agent.proxy.tracker import ProxyState
from podnet.kernel.rules import FakeIptables
from podnet.testing.proxy import endpoint_slice, service

CFG = ProxyConfig(
    cluster_cidr="10.244.0.0/16", service_cidr="10.96.0.0/12", node_ips=("192.168.0.2",)
)


def _state(endpoints: int) -> ProxyState:
    state = ProxyState(node_name="n1")
    for i in range(3):
        state.on_service(service("ns", f"s{i}", f"10.96.0.{i + 1}"))
        ips = [f"10.244.{i}.{k + 2}" for k in range(endpoints)]
        state.on_slice(endpoint_slice("ns", f"s{i}", ips))
    state.apply()
    return state


def _expected(state: ProxyState, changed: frozenset[str] | None, existing: set[str]) -> str:
    """The restore input rendered from scratch (no proxier, nothing kept)."""
    large = sum(len(e) for e in state.endpoints_map().values()) > ipt.LARGE_CLUSTER_ENDPOINTS
    fragments = {
        key: ipt.render_service_rules(ports, state.endpoints_of(key), CFG, large)
        for key, ports in state.services.items()
    }
    ordered = ((key, fragments[key]) for key in sorted(fragments))
    return "".join(ipt.restore_chunks(ordered, CFG, changed, existing))


def test_kept_fragments_hold_no_rules_and_partial_syncs_write_the_renderers_text() -> None:
    runner = FakeIptables()
    proxier = IptablesProxier(CFG, ProxyKernel(iptables=runner))
    state = _state(3)
    proxier.sync_now(state, None)
    full = runner.payloads[-1]
    for i in range(3):  # every Service's own chains and rules went in
        assert f'"ns/s{i}:p80 cluster IP" -m tcp -p tcp -d 10.96.0.{i + 1} --dport 80' in full
        assert f"-j DNAT --to-destination 10.244.{i}.4:80" in full
    assert all(f.nat_rules == "" and f.nat_chains for f in proxier.fragments.values())
    written = set(proxier.written or ())

    # one endpoint of s1 goes away: only s1's chains are rewritten, from a fresh render
    state.on_slice(endpoint_slice("ns", "s1", ["10.244.1.2", "10.244.1.3"]))
    changed = state.apply().updated_services
    assert changed == frozenset({"ns/s1"})
    proxier.sync_now(state, changed)
    partial = runner.payloads[-1]
    assert partial == _expected(state, changed, written)
    assert "-j DNAT --to-destination 10.244.1.3:80" in partial
    assert "10.244.0.2" not in partial and "10.244.1.4:80" not in partial
    assert all(f.nat_rules == "" for f in proxier.fragments.values())

    # a Service deleted: its chains flushed and deleted, the others' left alone
    state.on_service(service("ns", "s2", "10.96.0.3"), deleted=True)
    changed = state.apply().updated_services
    written = set(proxier.written or ())
    proxier.sync_now(state, changed)
    assert runner.payloads[-1] == _expected(state, changed, written)
    assert "ns/s2" not in proxier.fragments
