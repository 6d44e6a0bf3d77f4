"""flannel's traffic rules: masquerade what leaves the cluster network, accept its forwarding.

What belongs here: `render_flannel_rules` — the complete iptables-restore payload of the
`FLANNEL-POSTRTG` (nat) and `FLANNEL-FWD` (filter) chains, as flannel's
`pkg/trafficmngr/iptables` writes them — and `missing_jumps`, which reads an iptables-save
text to tell whether POSTROUTING / FORWARD already jump to them (`own_lines`: the few lines
of a dump they read, kept as the dump is read). Pure; the component loads
the text with one `iptables-restore --noflush` (DESIGN.md contract 2).

    POSTROUTING ─▶ FLANNEL-POSTRTG
        mark 0x4000/0x4000                    RETURN      (kube-proxy masquerades these)
        -s <pod subnet>  -d <network>         RETURN      (pod → pod: keep the pod IP)
        -s <network>     -d <pod subnet>      RETURN
        ! -s <network>   -d <pod subnet>      RETURN      (outside → local pod)
        -s <network>     ! -d 224.0.0.0/4     MASQUERADE  (pod → outside)
        ! -s <network>   -d <network>         MASQUERADE  (host → remote pod)
    FORWARD ─▶ FLANNEL-FWD:  -s <network> ACCEPT, -d <network> ACCEPT

Invariants:
- Declaring a chain in a --noflush restore replaces its rules, so the payload always holds
  the whole chain; the jump into it is appended only when `missing_jumps` says it is absent,
  so re-applying never duplicates it.
- Rule text is fixed by (network, pod subnet): golden-tested. It is exactly what
  iptables-save prints back, so `rules_in_place` can compare text to skip a no-op restore.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

NAT_CHAIN = "FLANNEL-POSTRTG"
FORWARD_CHAIN = "FLANNEL-FWD"
KUBE_PROXY_MARK = "0x4000/0x4000"
MASQ_COMMENT = '-m comment --comment "flanneld masq"'
FORWARD_COMMENT = '-m comment --comment "flanneld forward"'
NAT_JUMP = f"-A POSTROUTING {MASQ_COMMENT} -j {NAT_CHAIN}"
FORWARD_JUMP = f"-A FORWARD {FORWARD_COMMENT} -j {FORWARD_CHAIN}"


NAT_READ = ("POSTROUTING", NAT_CHAIN)  # the nat chains `rules_in_place`/`missing_jumps` read
FILTER_READ = ("FORWARD", FORWARD_CHAIN)


def own_lines(lines: Iterable[str], chains: tuple[str, ...]) -> str:
    """The `-A` lines of `chains` in a dump's lines, in order, as text: all `rules_in_place`
    and `missing_jumps` read of it. The nat table of a node whose kube-proxy serves 1,000
    Services of 30 endpoints is a ~10 MB dump; this keeps a dozen lines of it."""
    starts = tuple(f"-A {chain} " for chain in chains)
    return "".join(f"{line}\n" for line in lines if line.startswith(starts))


def missing_jumps(nat_save: str, filter_save: str) -> tuple[bool, bool]:
    """(POSTROUTING jump missing, FORWARD jump missing), from iptables-save text."""

    def has(text: str, chain: str, target: str) -> bool:
        pattern = re.compile(rf"^-A {chain} .*-j {re.escape(target)}\s*$", re.MULTILINE)
        return bool(pattern.search(text))

    return (
        not has(nat_save, "POSTROUTING", NAT_CHAIN),
        not has(filter_save, "FORWARD", FORWARD_CHAIN),
    )


def rules_in_place(nat_save: str, filter_save: str, rendered: str) -> bool:
    """Whether the saved tables already hold exactly the rendered chains (in order) and both
    jumps, so the periodic re-check can skip the restore."""
    saved = (nat_save + filter_save).splitlines()
    for chain in (NAT_CHAIN, FORWARD_CHAIN):
        prefix = f"-A {chain} "
        want = [line for line in rendered.splitlines() if line.startswith(prefix)]
        if [line for line in saved if line.startswith(prefix)] != want:
            return False
    return missing_jumps(nat_save, filter_save) == (False, False)


def render_flannel_rules(
    network: ipaddress.IPv4Network,
    pod_subnet: ipaddress.IPv4Network,
    add_nat_jump: bool = True,
    add_forward_jump: bool = True,
    ip_masq: bool = True,
) -> str:
    """The iptables-restore payload (nat + filter) for this node."""
    net, sub = str(network), str(pod_subnet)
    lines = ["*nat"]
    if ip_masq:
        lines += [
            f":{NAT_CHAIN} - [0:0]",
            f"-A {NAT_CHAIN} -m mark --mark {KUBE_PROXY_MARK} {MASQ_COMMENT} -j RETURN",
            f"-A {NAT_CHAIN} -s {sub} -d {net} {MASQ_COMMENT} -j RETURN",
            f"-A {NAT_CHAIN} -s {net} -d {sub} {MASQ_COMMENT} -j RETURN",
            f"-A {NAT_CHAIN} ! -s {net} -d {sub} {MASQ_COMMENT} -j RETURN",
            f"-A {NAT_CHAIN} -s {net} ! -d 224.0.0.0/4 {MASQ_COMMENT} -j MASQUERADE --random-fully",
            f"-A {NAT_CHAIN} ! -s {net} -d {net} {MASQ_COMMENT} -j MASQUERADE --random-fully",
        ]
        if add_nat_jump:
            lines.append(NAT_JUMP)
    lines += ["COMMIT", "*filter", f":{FORWARD_CHAIN} - [0:0]"]
    lines += [
        f"-A {FORWARD_CHAIN} -s {net} {FORWARD_COMMENT} -j ACCEPT",
        f"-A {FORWARD_CHAIN} -d {net} {FORWARD_COMMENT} -j ACCEPT",
    ]
    if add_forward_jump:
        lines.append(FORWARD_JUMP)
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"
