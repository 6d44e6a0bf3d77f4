"""flannel's network configuration (net-conf.json) and the subnet.env it leads to. Pure.

What belongs here: `NetConfig` — `Network`, `SubnetLen`, `SubnetMin`, `SubnetMax`,
`Backend.Type` parsed and validated with flannel's rules (`pkg/subnet/config.go`) — and
`render_subnet_env`, the exact text of `/run/flannel/subnet.env`.

Invariants:
- A `NetConfig` is valid by construction: the network is at most /28, SubnetLen leaves room
  for at least four subnets and is at most /30, SubnetMin/Max are inside the network, aligned
  to SubnetLen and ordered. Errors name the field, the rule and the value.
- The backend type is always explicit in what we write (flannel's source defaults a missing
  `Backend` to udp while its docs say vxlan; podnet's default is vxlan, as the shipped
  manifests set it).
- subnet.env is flannel's four lines, plus PODNET_GSO_MAX_SEGS only where the backend asks
  for it (udp): flannel's CNI plugin reads the keys it knows and ignores the rest.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from typing import Any

DEFAULT_NETWORK = "10.244.0.0/16"
DEFAULT_BACKEND = "vxlan"


class NetConfigError(ValueError):
    """The network configuration is invalid; the message names the field and the rule."""


def _invalid(field: str, rule: str, value: object) -> NetConfigError:
    return NetConfigError(f"net-conf {field}: {rule} (got {value!r})")


@dataclass(frozen=True, slots=True)
class NetConfig:
    network: ipaddress.IPv4Network
    subnet_len: int
    subnet_min: ipaddress.IPv4Address
    subnet_max: ipaddress.IPv4Address
    backend_type: str = DEFAULT_BACKEND
    backend: tuple[tuple[str, Any], ...] = ()  # the rest of the Backend object (Port, VNI, ...)

    def backend_option(self, key: str, default: Any) -> Any:
        """A Backend option (case-insensitive, as Go's JSON decoding is)."""
        for name, value in self.backend:
            if name.lower() == key.lower():
                return value
        return default

    @property
    def subnet_size(self) -> int:
        return int(2 ** (32 - self.subnet_len))

    def contains_subnet(self, subnet: ipaddress.IPv4Network) -> bool:
        return subnet.subnet_of(self.network)

    def to_json(self) -> str:
        """net-conf.json with every field explicit."""
        backend: dict[str, Any] = {"Type": self.backend_type}
        backend.update(dict(self.backend))
        return json.dumps(
            {
                "Network": str(self.network),
                "SubnetLen": self.subnet_len,
                "SubnetMin": str(self.subnet_min),
                "SubnetMax": str(self.subnet_max),
                "Backend": backend,
            },
            indent=2,
        )


def make_config(
    network: str = DEFAULT_NETWORK,
    subnet_len: int | None = None,
    subnet_min: str | None = None,
    subnet_max: str | None = None,
    backend_type: str = DEFAULT_BACKEND,
    backend_options: dict[str, Any] | None = None,
) -> NetConfig:
    """A validated `NetConfig`, defaults filled in as flannel's `CheckNetworkConfig` does."""
    try:
        net = ipaddress.IPv4Network(network)
    except ValueError as exc:
        raise _invalid(
            "Network", f"must be an IPv4 network in CIDR form ({exc})", network
        ) from None
    if net.prefixlen > 28:
        raise _invalid("Network", "is too small; the minimum useful network prefix is /28", network)
    if subnet_len is None or subnet_len == 0:
        length = 24 if net.prefixlen <= 22 else net.prefixlen + 2
    else:
        if not isinstance(subnet_len, int) or isinstance(subnet_len, bool):
            raise _invalid("SubnetLen", "must be an integer", subnet_len)
        if subnet_len > 30:
            raise _invalid("SubnetLen", "must be at most 30", subnet_len)
        if subnet_len < net.prefixlen + 2:
            raise _invalid(
                "SubnetLen",
                f"the network must be able to accommodate at least four subnets "
                f"(SubnetLen >= {net.prefixlen + 2} for {net})",
                subnet_len,
            )
        length = subnet_len
    size = 2 ** (32 - length)
    # the first subnet is skipped: its base address would be the network's address
    low = _subnet_start("SubnetMin", subnet_min, net, length, net.network_address + size)
    high = _subnet_start(
        "SubnetMax", subnet_max, net, length, net.network_address + (net.num_addresses - size)
    )
    if low > high:
        raise _invalid("SubnetMin", f"must not be above SubnetMax {high}", str(low))
    if not backend_type or not isinstance(backend_type, str):
        raise _invalid("Backend.Type", "must be a non-empty string", backend_type)
    options = tuple(sorted((backend_options or {}).items()))
    return NetConfig(net, length, low, high, backend_type.lower(), options)


def _subnet_start(
    field: str,
    value: str | None,
    net: ipaddress.IPv4Network,
    length: int,
    default: ipaddress.IPv4Address,
) -> ipaddress.IPv4Address:
    if value is None or value == "":
        return default
    try:
        address = ipaddress.IPv4Address(value)
    except ValueError:
        raise _invalid(field, "must be an IPv4 address", value) from None
    if address not in net:
        raise _invalid(field, f"must be inside Network {net}", value)
    if (int(address) - int(net.network_address)) % (2 ** (32 - length)):
        raise _invalid(field, f"must be aligned to SubnetLen /{length}", value)
    return address


def parse_net_conf(text: str) -> NetConfig:
    """Parse net-conf.json (flannel's shape); raises NetConfigError saying what is wrong."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise NetConfigError(f"net-conf is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise NetConfigError("net-conf must be a JSON object")
    known = {"network", "subnetlen", "subnetmin", "subnetmax", "backend", "enableipv4"}
    unknown = sorted(k for k in raw if k.lower() not in known and k.lower() != "enablenftables")
    if unknown:
        raise NetConfigError(
            f"net-conf has unsupported keys {unknown}; valid: Network, SubnetLen, SubnetMin, "
            "SubnetMax, Backend"
        )
    fields = {k.lower(): v for k, v in raw.items()}
    if fields.get("enableipv4") is False:
        raise _invalid("EnableIPv4", "podnet's cluster is IPv4-only; it must stay true", False)
    if "network" not in fields:
        raise NetConfigError('net-conf Network is required (e.g. "10.244.0.0/16")')
    backend = fields.get("backend")
    if backend is None:
        backend = {"Type": DEFAULT_BACKEND}
    if not isinstance(backend, dict):
        raise _invalid("Backend", "must be an object with a Type", backend)
    backend_type = next((v for k, v in backend.items() if k.lower() == "type"), DEFAULT_BACKEND)
    options = {k: v for k, v in backend.items() if k.lower() != "type"}
    for key in ("subnetmin", "subnetmax"):
        if fields.get(key) is not None and not isinstance(fields[key], str):
            raise _invalid(key.replace("subnet", "Subnet"), "must be a string", fields[key])
    network = fields["network"]
    if not isinstance(network, str):
        raise _invalid("Network", "must be a string in CIDR form", network)
    return make_config(
        network,
        fields.get("subnetlen"),
        fields.get("subnetmin"),
        fields.get("subnetmax"),
        backend_type,
        options,
    )


def render_subnet_env(
    config: NetConfig,
    subnet: ipaddress.IPv4Network,
    mtu: int,
    ip_masq: bool,
    pod_gso_max_segs: int | None = None,
) -> str:
    """subnet.env exactly as flannel's `WriteSubnetFile` writes it (FLANNEL_SUBNET = .1),
    and PODNET_GSO_MAX_SEGS (the pods' eth0 gso_max_segs, podnet's) when given."""
    first = subnet.network_address + 1
    return (
        f"FLANNEL_NETWORK={config.network}\n"
        f"FLANNEL_SUBNET={first}/{subnet.prefixlen}\n"
        f"FLANNEL_MTU={mtu}\n"
        f"FLANNEL_IPMASQ={'true' if ip_masq else 'false'}\n"
    ) + (f"PODNET_GSO_MAX_SEGS={pod_gso_max_segs}\n" if pod_gso_max_segs is not None else "")
