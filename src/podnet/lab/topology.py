"""Build and remove a lab's network: the underlay bridge on the host and one namespace per node.

The thin applier for `spec.LabPlan` (the planner decided every name and address):

    host namespace                              node namespace podnet-<lab>-nodeI
    pnb<hash>  bridge 172.31.N.1/24, mtu 1500
      ├─ pnv<hash>  (one per node) ─────────── eth0 172.31.N.(10+I)/24, up; lo up
      │                                         default via 172.31.N.1; ip_forward=1
      └─ pnv<hash>  (one per etcd member) ──── etcd namespace podnet-<lab>-etcdI
                                                eth0 172.31.N.(5+I)/24, up; lo up; no route
                                                out of the underlay; filter: ha.member_firewall

Order: bridge, then per node: namespace, veth (created straight into the namespace), its
addresses and routes; then the etcd members' namespaces the same way (the supervisor starts
each member inside its own, lab/ha.py). `build_topology` undoes its own work if any step
fails. A VM node (`NodePlan.vm`) gets a persistent tap instead, a port of the bridge under the
same `pnv` name its veth would have had; qemu attaches to it and the guest configures its own
eth0.

Bridged traffic and the host firewall: with br_netfilter (bridge-nf-call-iptables=1), frames
between two nodes on the underlay bridge traverse the host's iptables FORWARD chain, and a
host with FORWARD policy DROP (Docker sets it) would silently drop node-to-node traffic. In
that case, and only then, the lab inserts one rule accepting traffic that stays on its bridge
(what Docker does for docker0), marked with a comment naming the lab, and `remove_topology`
deletes it again.
`remove_topology` deletes the host links the plan names plus any `pnv*` port of the lab's
bridge (nodes a lost plan did not list), then every namespace under the lab's prefix (nodes,
etcd members and the pod sandboxes the agents made); anything already gone is fine, so it
doubles as crash cleanup.
"""

from __future__ import annotations

import logging

from podnet.kernel import names, netns, sysctl
from podnet.kernel.links import LinkError, Netlink
from podnet.kernel.netns import NetnsError
from podnet.kernel.rules import Iptables, IptablesRunner, RuleLoadError
from podnet.lab import ha
from podnet.lab.spec import EtcdMemberPlan, LabPlan, NodePlan


def forward_accept_rule(plan: LabPlan) -> str:
    """The FORWARD rule (iptables-save syntax, without -A/-I) that lets the underlay bridge
    forward between its own ports."""
    return (
        f"FORWARD -i {plan.bridge} -o {plan.bridge} "
        f'-m comment --comment "podnet lab {plan.name} underlay" -j ACCEPT'
    )


def forward_policy_drops(saved_filter: str) -> bool:
    return any(
        line.startswith(":FORWARD ") and line.split()[1] in ("DROP", "REJECT")
        for line in saved_filter.splitlines()
    )


def ensure_forward_accept(runner: Iptables, plan: LabPlan) -> bool:
    """Insert the accept rule if the FORWARD policy drops and it is not there; True if added."""
    saved = runner.save("filter")
    if not forward_policy_drops(saved) or f"-A {forward_accept_rule(plan)}" in saved:
        return False
    runner.restore(f"*filter\n-I {forward_accept_rule(plan)}\nCOMMIT\n")
    return True


def remove_forward_accept(runner: Iptables, plan: LabPlan) -> bool:
    saved = runner.save("filter")
    if f"-A {forward_accept_rule(plan)}" not in saved:
        return False
    runner.restore(f"*filter\n-D {forward_accept_rule(plan)}\nCOMMIT\n")
    return True


log = logging.getLogger(__name__)


def build_topology(plan: LabPlan) -> None:
    try:
        with Netlink() as host:
            host.ensure_bridge(plan.bridge, mtu=plan.mtu)
            host.ensure_address(plan.bridge, f"{plan.host_ip}/{plan.prefixlen}")
            if sysctl.bridge_nf_call_iptables():
                ensure_forward_accept(IptablesRunner(), plan)
            for node in plan.nodes:
                _build_node(host, plan, node)
            for member in plan.etcd_members:
                _build_etcd_member(host, plan, member)
    except BaseException:
        remove_topology(plan)
        raise


def build_node(plan: LabPlan, node: NodePlan) -> None:
    """Attach one more node namespace to a lab's existing underlay (`podnet add-node`)."""
    with Netlink() as host:
        _build_node(host, plan, node)


def _build_node(host: Netlink, plan: LabPlan, node: NodePlan) -> None:
    if node.vm:
        host.create_tap(node.host_veth, mtu=plan.mtu)
        host.set_master(node.host_veth, plan.bridge)
        host.set_up(node.host_veth)
        return
    _plug(host, plan, node.netns, node.host_veth, node.ifname, node.ip)
    with Netlink(node.netns) as inside:
        inside.replace_route("0.0.0.0/0", gateway=plan.host_ip, dev=node.ifname)
    sysctl.enable_ip_forward(node.netns)


def _build_etcd_member(host: Netlink, plan: LabPlan, member: EtcdMemberPlan) -> None:
    """No route beyond the underlay's own: the servers are on it."""
    _plug(host, plan, member.netns, member.host_veth, member.ifname, member.ip)
    IptablesRunner(member.netns).restore(ha.member_firewall(plan), noflush=False)


def _plug(
    host: Netlink, plan: LabPlan, namespace: str, host_veth: str, ifname: str, ip: str
) -> None:
    """A new namespace on the underlay bridge: its end of the veth, `ifname`, up at `ip`;
    `lo` up."""
    netns.create(namespace)
    host.create_veth(host_veth, ifname, peer_netns=namespace, mtu=plan.mtu)
    host.set_master(host_veth, plan.bridge)
    host.set_up(host_veth)
    with Netlink(namespace) as inside:
        inside.set_up("lo")
        inside.ensure_address(ifname, f"{ip}/{plan.prefixlen}")
        inside.set_up(ifname)


def remove_topology(plan: LabPlan, other_prefixes: tuple[str, ...] = ()) -> list[str]:
    """Delete the lab's namespaces and host links; returns what was removed.

    `other_prefixes` are the namespace prefixes of other labs that happen to start with this
    lab's prefix (refused at `up`, but a hand-made state could still have them): their
    namespaces are left alone.
    """
    removed: list[str] = []
    # host links first: a namespace's veths vanish only when the kernel's asynchronous
    # namespace cleanup runs, so deleting them here makes `down` finished when it returns
    with Netlink() as host:
        bridge = host.link(plan.bridge)
        ports = [
            link.name
            for link in host.links()
            if bridge is not None
            and link.master == bridge.index
            and link.name.startswith(names.LAB_NODE_VETH_PREFIX)
        ]
        for link in dict.fromkeys([*ports, *plan.host_links]):
            try:
                if host.delete_link(link):
                    removed.append(f"link {link}")
            except LinkError as exc:
                log.warning("could not delete link %s: %s", link, exc)
    try:
        if remove_forward_accept(IptablesRunner(), plan):
            removed.append(f"iptables rule {forward_accept_rule(plan)}")
    except (RuleLoadError, NetnsError) as exc:
        log.warning("could not check the host's FORWARD chain: %s", exc)
    for name in netns.list_names(plan.netns_prefix):
        if any(name.startswith(p) for p in other_prefixes if len(p) > len(plan.netns_prefix)):
            continue
        if netns.delete(name):
            removed.append(f"netns {name}")
    return removed
