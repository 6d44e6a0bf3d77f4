"""The CNI bridge plugin with host-local IPAM, as a library: ADD, DEL, CHECK.

What ADD builds (flannel-cni.md §4.2, the state `ip` would show):

    node namespace (the caller's)             pod namespace (CNI_NETNS)
    cni0  bridge, mtu M, <gateway>/<len>      lo   up
      └─ veth<8 hex>  master cni0, hairpin ── eth0 <ip>/<len> mtu M, up
                                                   [gso_max_segs G: podnet's, flannel udp]
    net.ipv4.ip_forward = 1                   default via <gateway>; <routes> via <gateway>

Order and rollback: the bridge and its gateway address come first (a conflicting address on
the bridge fails before anything is reserved); then the address is reserved; then the veth
pair is made and configured. If any later step fails, the pair is deleted and the address
released before the error is raised, so a failed ADD leaves only the (shared) bridge.

DEL releases the address and deletes the pod's interface (its veth peer goes with it); it
succeeds when any of that is already gone. The "host" is the namespace of the calling thread:
the agent runs inside its node's namespace, tests wrap calls in `netns.enter(node)`.
"""

from __future__ import annotations

import errno
import ipaddress
import re
import secrets

from podnet.agent.cni.config import BridgeConfig, validate_ifname
from podnet.agent.cni.errors import (
    INVALID_ENVIRONMENT,
    UNKNOWN,
    UNKNOWN_CONTAINER,
    CniError,
)
from podnet.agent.cni.hostlocal import AddressRange, HostLocal
from podnet.agent.cni.result import CniDns, CniInterface, CniIp, CniResult, CniRoute
from podnet.kernel import names, sysctl
from podnet.kernel import netns as netns_ops
from podnet.kernel.links import LinkError, Netlink
from podnet.kernel.rules import IptablesRunner, RuleLoadError

_CONTAINER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")  # the spec's rule
VETH_ATTEMPTS = 5


def validate_container_id(container_id: str) -> str:
    if not _CONTAINER_ID.match(container_id):
        raise CniError(
            INVALID_ENVIRONMENT,
            "invalid container id: use letters, digits, '_', '.' and '-'",
            repr(container_id),
        )
    return container_id


def host_local(conf: BridgeConfig) -> HostLocal:
    rng = AddressRange.from_subnet(
        conf.subnet, str(conf.gateway_address), conf.range_start, conf.range_end
    )
    return HostLocal(conf.store_dir, rng)


def _kernel_error(action: str, exc: Exception) -> CniError:
    return CniError(UNKNOWN, f"{action} failed", str(exc))


# ---------------------------------------------------------------------------------------
# ip masquerade: one chain per container, as upstream's pkg/ip/ipmasq_iptables_linux.go


def masq_chain(conf: BridgeConfig, container_id: str) -> str:
    return names.chain(names.CNI_MASQ_CHAIN_PREFIX, f"{conf.name}/{container_id}")


def render_masq_add(conf: BridgeConfig, container_id: str, ip: str) -> str:
    chain = masq_chain(conf, container_id)
    comment = f'-m comment --comment "name: {conf.name} id: {container_id}"'
    return (
        "*nat\n"
        f":{chain} - [0:0]\n"
        f"-A {chain} -d {conf.network} {comment} -j ACCEPT\n"
        f"-A {chain} ! -d 224.0.0.0/4 {comment} -j MASQUERADE\n"
        f"-A POSTROUTING -s {ip}/32 {comment} -j {chain}\n"
        "COMMIT\n"
    )


def render_masq_del(conf: BridgeConfig, container_id: str, ip: str) -> str:
    chain = masq_chain(conf, container_id)
    comment = f'-m comment --comment "name: {conf.name} id: {container_id}"'
    return f"*nat\n-D POSTROUTING -s {ip}/32 {comment} -j {chain}\n-F {chain}\n-X {chain}\nCOMMIT\n"


def _teardown_masq(conf: BridgeConfig, container_id: str, ips: list[str]) -> None:
    runner = IptablesRunner()
    if f":{masq_chain(conf, container_id)} " not in runner.save("nat"):
        return
    for ip in ips:
        runner.restore(render_masq_del(conf, container_id, ip))


# ---------------------------------------------------------------------------------------


def _ensure_bridge(host: Netlink, conf: BridgeConfig) -> None:
    host.ensure_bridge(conf.bridge, mtu=conf.mtu)
    if not conf.is_gateway:
        return
    want = ipaddress.IPv4Interface(conf.gateway_cidr)
    for have in host.addresses(conf.bridge):
        if have.interface == want:
            break
        if not conf.force_address:
            raise CniError(
                UNKNOWN,
                f"{conf.bridge!r} already has an IP address different from {want}",
                f"it has {have.cidr}; the node's pod subnet changed? delete the bridge or "
                "set forceAddress",
            )
        host.delete_address(conf.bridge, have.cidr)
    host.ensure_address(conf.bridge, str(want))
    sysctl.enable_ip_forward()


def _create_veth(
    host: Netlink, ifname: str, netns: str, mtu: int, gso_max_segs: int | None = None
) -> str:
    for _ in range(VETH_ATTEMPTS):
        name = names.POD_VETH_PREFIX + secrets.token_hex(4)
        try:
            host.create_veth(
                name, ifname, peer_netns=netns, mtu=mtu, peer_gso_max_segs=gso_max_segs
            )
        except LinkError as exc:
            if exc.errno == errno.EEXIST and host.link(name) is not None:
                continue  # random name taken on the host: draw again
            raise
        return name
    raise CniError(UNKNOWN, f"could not find a free veth name after {VETH_ATTEMPTS} attempts")


def cni_add(conf: BridgeConfig, container_id: str, netns: str, ifname: str = "eth0") -> CniResult:
    """Connect the pod namespace `netns` (a path) to the bridge; returns the CNI result."""
    validate_container_id(container_id)
    validate_ifname(ifname)
    if not netns_ops.exists(netns):
        raise CniError(UNKNOWN_CONTAINER, f"network namespace {netns} does not exist")
    store = host_local(conf)
    gateway = str(conf.gateway_address)
    try:
        with Netlink() as host, Netlink(netns) as pod:
            if pod.link(ifname) is not None:
                raise CniError(UNKNOWN, f"container interface {ifname} already exists in {netns}")
            _ensure_bridge(host, conf)
            address = store.allocate(container_id, ifname)
            host_veth: str | None = None
            try:
                host_veth = _create_veth(host, ifname, netns, conf.mtu, conf.gso_max_segs)
                host.set_master(host_veth, conf.bridge)
                if conf.hairpin_mode:
                    host.set_hairpin(host_veth, True)
                host.set_up(host_veth)
                pod.set_up("lo")
                pod.ensure_address(ifname, str(address))
                pod.set_up(ifname)
                sysctl.write(sysctl.interface_key(ifname, "arp_notify"), 1, netns)
                for dst in conf.routes:
                    pod.replace_route(dst, gateway=gateway, dev=ifname)
                if conf.is_default_gateway:
                    pod.replace_route("0.0.0.0/0", gateway=gateway, dev=ifname)
                if conf.ip_masq:
                    IptablesRunner().restore(render_masq_add(conf, container_id, str(address.ip)))
                veth = host.wait_running(host_veth)
                bridge = host.require(conf.bridge)
                inside = pod.require(ifname)
            except BaseException:
                if host_veth is not None:
                    host.delete_link(host_veth)
                store.release(container_id, ifname)
                raise
    except LinkError as exc:
        raise _kernel_error(f"ADD of {container_id}/{ifname}", exc) from exc
    except RuleLoadError as exc:
        raise _kernel_error(f"ip masquerade for {container_id}", exc) from exc
    routes = [CniRoute(dst) for dst in conf.routes]
    if conf.is_default_gateway:
        routes.append(CniRoute("0.0.0.0/0", gateway))
    return CniResult(
        interfaces=(
            CniInterface(bridge.name, bridge.mac),
            CniInterface(veth.name, veth.mac),
            CniInterface(inside.name, inside.mac, sandbox=netns),
        ),
        ips=(CniIp(str(address), gateway, interface=2),),
        routes=tuple(routes),
        dns=CniDns(conf.dns_nameservers, conf.dns_domain, conf.dns_search),
    )


def cni_del(conf: BridgeConfig, container_id: str, netns: str | None, ifname: str = "eth0") -> None:
    """Release the address and remove the pod's interface; anything already gone is fine."""
    validate_container_id(container_id)
    validate_ifname(ifname)
    store = host_local(conf)
    try:
        if conf.ip_masq:
            held = [str(ip) for ip in store.lookup(container_id, ifname)]
            _teardown_masq(conf, container_id, held)
        store.release(container_id, ifname)
        if netns and netns_ops.exists(netns):
            with Netlink(netns) as pod:
                pod.delete_link(ifname)
    except LinkError as exc:
        raise _kernel_error(f"DEL of {container_id}/{ifname}", exc) from exc
    except RuleLoadError as exc:
        raise _kernel_error(f"removing ip masquerade for {container_id}", exc) from exc


def cni_check(conf: BridgeConfig, container_id: str, netns: str, ifname: str = "eth0") -> None:
    """Verify that what ADD built is still there; raise `CniError` naming what is not."""
    validate_container_id(container_id)
    validate_ifname(ifname)
    held = host_local(conf).lookup(container_id, ifname)
    if not held:
        raise CniError(UNKNOWN_CONTAINER, f"no IP address is allocated to {container_id}/{ifname}")
    if not netns_ops.exists(netns):
        raise CniError(UNKNOWN_CONTAINER, f"network namespace {netns} does not exist")
    gateway = str(conf.gateway_address)
    problems: list[str] = []
    try:
        with Netlink(netns) as pod, Netlink() as host:
            inside = pod.link(ifname)
            if inside is None:
                raise CniError(UNKNOWN, f"interface {ifname} is missing in {netns}")
            if not inside.up:
                problems.append(f"{ifname} is down")
            have = {a.interface for a in pod.addresses(ifname)}
            for ip in held:
                if ipaddress.IPv4Interface(f"{ip}/{conf.network.prefixlen}") not in have:
                    problems.append(f"{ifname} lacks its address {ip}")
            routes = {r.dst: r for r in pod.routes()}
            wanted = [*conf.routes, *(["0.0.0.0/0"] if conf.is_default_gateway else [])]
            for dst in wanted:
                route = routes.get(str(ipaddress.IPv4Network(dst)))
                if route is None or route.gateway != gateway:
                    problems.append(f"route {dst} via {gateway} is missing")
            bridge = host.link(conf.bridge)
            if bridge is None:
                problems.append(f"bridge {conf.bridge} is missing")
            else:
                peer = host.link_by_index(inside.link_index) if inside.link_index else None
                if peer is None or peer.master != bridge.index:
                    problems.append(f"the host end of {ifname} is not a port of {conf.bridge}")
    except LinkError as exc:
        raise _kernel_error(f"CHECK of {container_id}/{ifname}", exc) from exc
    if problems:
        raise CniError(UNKNOWN, f"CHECK of {container_id}/{ifname} failed", "; ".join(problems))
