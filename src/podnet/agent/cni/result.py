"""The CNI ADD result and its JSON in each supported spec version.

`CniResult` is version-neutral; `to_json(cni_version)` renders the spec's shape: 1.0.0 and
later drop `ips[].version`, which 0.3.x/0.4.0 require (kube-flannel's conflist says 0.3.1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
LATEST_VERSION = SUPPORTED_VERSIONS[-1]


def version_tuple(version: str) -> tuple[int, ...]:
    """ "0.4.0" -> (0, 4, 0), for ordering spec versions."""
    try:
        return tuple(int(part) for part in version.split("."))
    except ValueError:
        raise ValueError(f"{version!r} is not a CNI version like 1.0.0") from None


@dataclass(frozen=True, slots=True)
class CniInterface:
    name: str
    mac: str | None = None
    sandbox: str | None = None  # the netns path, for interfaces inside the container


@dataclass(frozen=True, slots=True)
class CniIp:
    address: str  # CIDR: "10.244.1.2/24"
    gateway: str | None = None
    interface: int | None = None  # index into `interfaces`


@dataclass(frozen=True, slots=True)
class CniRoute:
    dst: str
    gw: str | None = None


@dataclass(frozen=True, slots=True)
class CniDns:
    nameservers: tuple[str, ...] = ()
    domain: str | None = None
    search: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.nameservers:
            out["nameservers"] = list(self.nameservers)
        if self.domain:
            out["domain"] = self.domain
        if self.search:
            out["search"] = list(self.search)
        return out


@dataclass(frozen=True, slots=True)
class CniResult:
    interfaces: tuple[CniInterface, ...]
    ips: tuple[CniIp, ...]
    routes: tuple[CniRoute, ...]
    dns: CniDns = field(default_factory=CniDns)

    @property
    def pod_ip(self) -> str:
        """The first address without its prefix length ("10.244.1.2")."""
        return self.ips[0].address.split("/")[0]

    def to_json(self, cni_version: str = LATEST_VERSION) -> dict[str, Any]:
        if cni_version not in SUPPORTED_VERSIONS:
            raise ValueError(f"unsupported CNI version {cni_version!r}")
        legacy = version_tuple(cni_version) < (1, 0, 0)
        interfaces = []
        for iface in self.interfaces:
            item: dict[str, Any] = {"name": iface.name}
            if iface.mac:
                item["mac"] = iface.mac
            if iface.sandbox:
                item["sandbox"] = iface.sandbox
            interfaces.append(item)
        ips = []
        for ip in self.ips:
            entry: dict[str, Any] = {}
            if legacy:
                entry["version"] = "4"
            if ip.interface is not None:
                entry["interface"] = ip.interface
            entry["address"] = ip.address
            if ip.gateway:
                entry["gateway"] = ip.gateway
            ips.append(entry)
        routes = []
        for route in self.routes:
            r: dict[str, Any] = {"dst": route.dst}
            if route.gw:
                r["gw"] = route.gw
            routes.append(r)
        return {
            "cniVersion": cni_version,
            "interfaces": interfaces,
            "ips": ips,
            "routes": routes,
            "dns": self.dns.to_dict(),
        }
