"""The bridge + host-local network configuration, as one frozen, self-validating value.

`BridgeConfig` holds the knobs of upstream's bridge plugin and host-local IPAM that podnet
supports; `parse_netconf` turns an upstream-style CNI JSON network config into one. Anything
invalid is rejected here, naming the field, the rule and the value, before the kernel is
touched. Defaults follow flannel's delegate to the bridge plugin (hairpin on, default gateway
on, gateway = first address of the subnet).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from podnet.agent.cni.errors import INVALID_NETWORK_CONFIG, UNSUPPORTED_FIELD, CniError

DEFAULT_DATA_DIR = Path("/var/lib/cni/networks")
_NETWORK_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$")  # libcni's network name rule
_IFNAME = re.compile(r"^[^/\s:]{1,15}$")


def _invalid(field: str, rule: str, value: object) -> CniError:
    return CniError(INVALID_NETWORK_CONFIG, f"invalid network config: {field} {rule}", repr(value))


def validate_ifname(ifname: str) -> str:
    if not _IFNAME.match(ifname) or ifname in (".", ".."):
        raise CniError(
            INVALID_NETWORK_CONFIG,
            "invalid interface name: 1-15 characters without '/', ':' or spaces",
            repr(ifname),
        )
    return ifname


@dataclass(frozen=True, slots=True, kw_only=True)
class BridgeConfig:
    name: str = "cbr0"  # the CNI network name; host-local keeps its files under data_dir/name
    bridge: str = "cni0"
    subnet: str  # the node's pod subnet, e.g. "10.244.1.0/24"
    gateway: str | None = None  # default: first address of the subnet
    range_start: str | None = None  # default: subnet + 1 (the gateway is skipped)
    range_end: str | None = None  # default: last address before broadcast
    mtu: int = 1500
    # the pod end's gso_max_segs (podnet's, not upstream's; None: the kernel's default): the
    # flannel udp backend asks for it (subnet.env PODNET_GSO_MAX_SEGS) so that a pod's TCP
    # superpacket, cut into segments, fits one UDP GSO send of the userspace datapath
    gso_max_segs: int | None = None
    hairpin_mode: bool = True
    is_gateway: bool = True  # put the gateway address on the bridge, enable ip_forward
    is_default_gateway: bool = True  # default route in the pod via the gateway
    force_address: bool = False  # replace a different address already on the bridge
    ip_masq: bool = False
    routes: tuple[str, ...] = ()  # extra destination CIDRs routed via the gateway
    data_dir: Path = DEFAULT_DATA_DIR  # host-local store: <data_dir>/<name>/<ip>, lock, ...
    dns_nameservers: tuple[str, ...] = ()
    dns_search: tuple[str, ...] = ()
    dns_domain: str | None = None

    def __post_init__(self) -> None:
        if not _NETWORK_NAME.match(self.name):
            raise _invalid("name", "must be letters, digits, '_', '.', '-'", self.name)
        validate_ifname(self.bridge)
        try:
            network = ipaddress.IPv4Network(self.subnet)
        except ValueError as exc:
            raise _invalid(
                "subnet", f"must be an IPv4 network address ({exc})", self.subnet
            ) from None
        if network.prefixlen > 30:
            raise _invalid(
                "subnet", "is too small: /31 and /32 leave no pod addresses", self.subnet
            )
        for field_name in ("gateway", "range_start", "range_end"):
            value = getattr(self, field_name)
            if value is None:
                continue
            try:
                address = ipaddress.IPv4Address(value)
            except ValueError:
                raise _invalid(field_name, "must be an IPv4 address", value) from None
            if address not in network:
                raise _invalid(field_name, f"must be inside subnet {self.subnet}", value)
        if not 68 <= self.mtu <= 65535:
            raise _invalid("mtu", "must be between 68 and 65535", self.mtu)
        if self.gso_max_segs is not None and not 1 <= self.gso_max_segs <= 65535:
            raise _invalid("gso_max_segs", "must be between 1 and 65535", self.gso_max_segs)
        for route in self.routes:
            try:
                ipaddress.IPv4Network(route)
            except ValueError:
                raise _invalid("routes", "must be IPv4 networks in CIDR form", route) from None
        for server in self.dns_nameservers:
            try:
                ipaddress.ip_address(server)
            except ValueError:
                raise _invalid("dns.nameservers", "must be IP addresses", server) from None

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.subnet)

    @property
    def gateway_address(self) -> ipaddress.IPv4Address:
        return ipaddress.IPv4Address(self.gateway) if self.gateway else self.network[1]

    @property
    def gateway_cidr(self) -> str:
        return f"{self.gateway_address}/{self.network.prefixlen}"

    @property
    def store_dir(self) -> Path:
        return self.data_dir / self.name


def _bool(conf: dict[str, Any], key: str, default: bool) -> bool:
    value = conf.get(key, default)
    if not isinstance(value, bool):
        raise _invalid(key, "must be true or false", value)
    return value


def _single_range(ipam: dict[str, Any]) -> dict[str, Any]:
    """host-local accepts `subnet` (legacy) or `ranges` (a list of range sets)."""
    ranges = ipam.get("ranges")
    legacy = {k: ipam[k] for k in ("subnet", "rangeStart", "rangeEnd", "gateway") if k in ipam}
    sets: list[list[dict[str, Any]]] = []
    if legacy:
        sets.append([legacy])
    if ranges is not None:
        if not isinstance(ranges, list) or not all(isinstance(s, list) for s in ranges):
            raise _invalid("ipam.ranges", "must be a list of lists of ranges", ranges)
        sets.extend(ranges)
    if not sets:
        raise _invalid("ipam", "needs a subnet (ipam.subnet or ipam.ranges)", ipam)
    if len(sets) != 1 or len(sets[0]) != 1:
        raise CniError(
            UNSUPPORTED_FIELD,
            "only one range set with one IPv4 range is supported (the cluster is single-stack)",
            repr(ranges),
        )
    one = sets[0][0]
    if not isinstance(one, dict) or "subnet" not in one:
        raise _invalid("ipam.ranges[0][0]", "must be an object with a subnet", one)
    return one


def parse_netconf(conf: dict[str, Any]) -> BridgeConfig:
    """An upstream bridge + host-local network config (JSON object) -> `BridgeConfig`.

    Absent fields take upstream's defaults (hairpinMode, isGateway, isDefaultGateway false),
    not the library's flannel-style ones, so an upstream config means what it meant there.
    """
    for unsupported in ("vlan", "vlanTrunk", "promiscMode", "macspoofchk", "portIsolation"):
        if conf.get(unsupported):
            raise CniError(UNSUPPORTED_FIELD, f"field {unsupported!r} is not supported", "")
    ipam = conf.get("ipam")
    if not isinstance(ipam, dict):
        raise _invalid("ipam", "is required (an object with type host-local)", ipam)
    if ipam.get("type", "host-local") != "host-local":
        raise CniError(
            UNSUPPORTED_FIELD, "only host-local IPAM is built in", repr(ipam.get("type"))
        )
    one = _single_range(ipam)
    gateway = one.get("gateway")
    try:
        effective_gateway = gateway or str(ipaddress.IPv4Network(str(one["subnet"]))[1])
    except ValueError as exc:
        raise _invalid("ipam subnet", f"must be an IPv4 network address ({exc})", one) from None
    routes: list[str] = []
    has_default_route = False
    for route in ipam.get("routes", []) or []:
        if not isinstance(route, dict) or "dst" not in route:
            raise _invalid("ipam.routes", "entries must be objects with dst", route)
        if route.get("gw") not in (None, effective_gateway):
            raise CniError(
                UNSUPPORTED_FIELD, "routes via a gateway other than the bridge's", repr(route)
            )
        if str(route["dst"]) in ("0.0.0.0/0", "default"):
            has_default_route = True  # same effect as isDefaultGateway
            continue
        routes.append(str(route["dst"]))
    dns = conf.get("dns") or {}
    if not isinstance(dns, dict):
        raise _invalid("dns", "must be an object", dns)
    mtu = conf.get("mtu", 1500) or 1500
    if not isinstance(mtu, int):
        raise _invalid("mtu", "must be an integer", mtu)
    is_default_gateway = _bool(conf, "isDefaultGateway", False) or has_default_route
    return BridgeConfig(
        name=str(conf.get("name", "cbr0")),
        bridge=str(conf.get("bridge", "cni0")),
        subnet=str(one["subnet"]),
        gateway=gateway,
        range_start=one.get("rangeStart"),
        range_end=one.get("rangeEnd"),
        mtu=mtu,
        hairpin_mode=_bool(conf, "hairpinMode", False),
        is_gateway=_bool(conf, "isGateway", False) or is_default_gateway,
        is_default_gateway=is_default_gateway,
        force_address=_bool(conf, "forceAddress", False),
        ip_masq=_bool(conf, "ipMasq", False),
        routes=tuple(routes),
        data_dir=Path(ipam.get("dataDir", DEFAULT_DATA_DIR)),
        dns_nameservers=tuple(dns.get("nameservers", ()) or ()),
        dns_search=tuple(dns.get("search", ()) or ()),
        dns_domain=dns.get("domain"),
    )
