"""resolv.conf as the kubelet reads and writes it: parse a node's file, render a pod's.

Pure, except `read_resolv_conf` (a missing file reads as empty, like the kubelet's
`--resolv-conf=""`). Both sides of cluster DNS use it: the DNS server takes its upstream resolvers
from the node's file (CoreDNS's `forward . /etc/resolv.conf`), and the kubelet composes each
pod's file from the node's (dnsPolicy Default) or from the cluster's (ClusterFirst).

Parsing follows the kubelet's `parseResolvConf`: `nameserver` lines accumulate, the last
`search` line wins (entries lose a trailing dot, a lone "." is dropped), `options` lines
accumulate with a later option replacing an earlier one of the same name; `domain` and
comments are ignored. Rendering follows containerd's sandbox resolv.conf: `search`, then one
`nameserver` line each, then `options`, each line only when it has entries.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

DEFAULT_RESOLV_CONF = Path("/etc/resolv.conf")


@dataclass(frozen=True, slots=True)
class ResolvConf:
    nameservers: tuple[str, ...] = ()
    searches: tuple[str, ...] = ()
    options: tuple[str, ...] = ()  # "ndots:5", "edns0", ...

    def render(self) -> str:
        lines = []
        if self.searches:
            lines.append("search " + " ".join(self.searches))
        lines += [f"nameserver {server}" for server in self.nameservers]
        if self.options:
            lines.append("options " + " ".join(self.options))
        return "".join(line + "\n" for line in lines)


def parse_resolv_conf(text: str) -> ResolvConf:
    nameservers: list[str] = []
    searches: list[str] = []
    options: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith(("#", ";")):
            continue
        fields = line.split()
        if not fields:
            continue
        if fields[0] == "nameserver" and len(fields) >= 2:
            nameservers.append(fields[1])
        elif fields[0] == "search":
            searches = [s.removesuffix(".") for s in fields[1:] if s != "."]
        elif fields[0] == "options":
            options = merge_options(options, fields[1:])
    return ResolvConf(tuple(nameservers), tuple(searches), tuple(options))


def read_resolv_conf(path: Path | None) -> ResolvConf:
    if path is None:
        return ResolvConf()
    try:
        return parse_resolv_conf(path.read_text())
    except FileNotFoundError:
        return ResolvConf()


def option_name(option: str) -> str:
    return option.split(":", 1)[0]


def merge_options(existing: Iterable[str], new: Iterable[str]) -> list[str]:
    """Options by name, a later one replacing an earlier one in place (kubelet's
    `mergeDNSOptions`; upstream iterates a Go map, podnet keeps first-seen order)."""
    merged: dict[str, str] = {}
    for option in [*existing, *new]:
        merged[option_name(option)] = option
    return list(merged.values())


def omit_duplicates(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))
