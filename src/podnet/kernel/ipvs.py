"""IPVS virtual servers, ipsets and the local holder of service addresses, for ipvs mode.

DESIGN.md contract 2 applied to IPVS: a caller renders text and hands it to one call here.
`IpvsRunner.restore(text)` feeds `ipvsadm -R` (the loader behind `ipvsadm-restore`) on stdin,
`IpvsRunner.save()` reads `ipvsadm-save -n` (how upstream tooling dumps the table),
`IpvsRunner.stats()` the kernel's table with its connection counters (/proc/net/ip_vs),
`IpsetRunner.restore(text)` feeds `ipset restore -exist`, `IpsetRunner.save()` reads `ipset
save`. `ServiceAddressHolder` binds
ClusterIPs as local /32 addresses through `podnet.kernel.links.Netlink`. `FakeIpvs` and
`FakeIpset` record payloads for unit tests; `FakeNetlink` stands in for the holder's netlink.

Decisions:
- No implicit clear. `ipvsadm-restore` (the shell script) runs `ipvsadm -C` before loading,
  which empties the whole IPVS table for the duration of the load: every Service blackholes
  and every persistence (ClientIP affinity) template is lost on every sync. `restore` runs
  `ipvsadm -R` directly and callers send a reconcile script (add/edit/delete per virtual
  and real server, computed against `save()`), which is what upstream does per virtual
  server through netlink. `restore(text, clear=True)` gives the script's semantics.
- ClusterIP holder: upstream binds ClusterIPs on the dummy link `kube-ipvs0`. Where the
  kernel has no dummy driver (this one), the addresses go on `lo` as /32 with the address
  label `lo:kube-ipvs`; Linux treats every address on any local link as local (a route of
  type local in table local), so IPVS sees the packets in both cases. The label is how the
  holder tells its addresses from anyone else's on `lo`.

- ClusterIPs are bound in batches (`Netlink.add_addresses`: a few hundred requests to a
  write), never one address listing per address: 10k Services are 10k addresses.
- A tool run's timeout grows with the table like iptables-restore's (30 s plus so much per
  MB of input, or of the largest table the runner has seen, for a save); a fixed one would cut
  a large cluster's every sync off, to be retried for ever. The per-MB part is these tools'
  own, not iptables-restore's 10 s: ipset and ipvsadm make one kernel request per line (an
  ipset `add` is ~48 bytes, ~20k requests a MB) where iptables-restore swaps a table once, and
  in an emulated VM node (TCG, the ipset tool ~70x slower than on the host) ipset restore took
  15-17.5 s per MB (docs/kube-proxy.md, 10k Services: 2.4 MB in 36-42 s, which 10 s/MB gave
  54 s for).

Invariants:
- Payloads go on stdin, never on a command line; a runner bound to a namespace runs its tool
  inside it (`netns.run`). A rejected payload raises `RuleLoadError` with the offending line
  and three lines of context on each side when the tool's message lets us find it.
- `ServiceAddressHolder` only ever removes addresses that carry its label.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from podnet.kernel import netns as netns_ops
from podnet.kernel.links import Netlink, NetlinkApi
from podnet.kernel.rules import RESTORE_TIMEOUT, RuleLoadError, extract_lines

IPVS_PROC_FILE = Path("/proc/net/ip_vs")
# /proc/net is /proc/self/net: the thread group leader's namespace; this is the thread's own
IPVS_THREAD_PROC_FILE = Path("/proc/thread-self/net/ip_vs")
DUMMY_DEVICE = "kube-ipvs0"
LOOPBACK = "lo"
LOOPBACK_LABEL = "lo:kube-ipvs"  # IFA_LABEL: "<ifname>:<tag>", at most 15 characters

# seconds per MB of a run's input (or of the largest table seen, for a save), on top of
# RESTORE_TIMEOUT: ~3.5x the emulated ipset restore's worst measured 17.5 s/MB (see above)
SECONDS_PER_MB = 60.0

_LINE = re.compile(r"\bline:? (\d+)", re.IGNORECASE)
# ipvsadm names the bad word instead of a line: "invalid option `--foo'", "unexpected argument x"
_QUOTED = re.compile(r"[`'\"]([^`'\"\s]+)['\"]|unexpected argument (\S+)")


def _locate(stderr: str, payload: str) -> int | None:
    """The payload line (1-based) an error message points at, if it can be told."""
    match = _LINE.search(stderr)
    if match:
        return int(match.group(1))
    for found in _QUOTED.finditer(stderr):
        word = found.group(1) or found.group(2)
        for number, line in enumerate(payload.splitlines(), 1):
            if word in line.split():
                return number
    return None


def _load_error(tool: str, returncode: int, stderr: str, payload: str) -> RuleLoadError:
    line = _locate(stderr, payload)
    context = extract_lines(payload, line) if line is not None else ""
    return RuleLoadError(tool, returncode, stderr, line, context)


class Ipvs(Protocol):
    """What the ipvs proxier needs from IPVS; `IpvsRunner` and `FakeIpvs` provide it."""

    def restore(self, text: str, clear: bool = False) -> None: ...

    def save(self) -> str: ...

    def stats(self) -> str: ...

    def available(self) -> bool: ...


class Ipset(Protocol):
    """What the ipvs proxier needs from ipset; `IpsetRunner` and `FakeIpset` provide it."""

    def restore(self, text: str) -> None: ...

    def names(self) -> list[str]: ...

    def destroy(self, names: Iterable[str]) -> None: ...


class _Timeouts:
    """A tool run's timeout that grows with the table, as iptables-restore's does (30 s plus
    `SECONDS_PER_MB`, these tools' own rate: see the module's decisions): a restore by its
    input, a save by the largest table this runner has loaded or read. A fixed limit would cut
    off every sync of a large enough cluster (10k Services: 2.4 MB of ipset lines), to be
    retried for ever. `fixed` (seconds) replaces it for every run."""

    def __init__(self, fixed: float | None) -> None:
        self.fixed = fixed
        self.largest = 0  # bytes

    def restore(self, payload: str) -> float:
        self.largest = max(self.largest, len(payload))
        return self.fixed if self.fixed is not None else self._scaled(len(payload))

    def save(self) -> float:
        return self.fixed if self.fixed is not None else self._scaled(self.largest)

    def saved(self, output: str) -> None:
        self.largest = max(self.largest, len(output))

    @staticmethod
    def _scaled(payload_bytes: int) -> float:
        return RESTORE_TIMEOUT + SECONDS_PER_MB * payload_bytes / 1e6


class IpvsRunner:
    """ipvsadm in one network namespace (None = the agent's own); `timeout` (seconds) fixes
    each tool run's limit instead of scaling it with the table."""

    def __init__(self, netns: str | None = None, timeout: float | None = None) -> None:
        self.netns = netns
        self.timeouts = _Timeouts(timeout)

    def available(self) -> bool:
        """True when IP_VS is loaded; /proc/net/ip_vs exists per network namespace."""
        return netns_ops.call_in(self.netns, IPVS_PROC_FILE.exists)

    def restore(self, text: str, clear: bool = False) -> None:
        """Run `text` (ipvsadm commands, one per line) with `ipvsadm -R`.

        ipvsadm applies line by line (IPVS has no transactions): lines before a failing
        one stay applied, so callers must treat a failure as "state unknown".
        """
        if clear:
            done = netns_ops.run(["ipvsadm", "-C"], self.netns, timeout=self.timeouts.save())
            if done.returncode != 0:
                raise RuleLoadError("ipvsadm -C", done.returncode, done.stderr, None, "")
        if not text.strip():
            return
        done = netns_ops.run(["ipvsadm", "-R"], self.netns, text, self.timeouts.restore(text))
        if done.returncode != 0:
            raise _load_error("ipvsadm -R", done.returncode, done.stderr, text)

    def save(self) -> str:
        done = netns_ops.run(["ipvsadm-save", "-n"], self.netns, timeout=self.timeouts.save())
        if done.returncode != 0:
            raise RuleLoadError("ipvsadm-save", done.returncode, done.stderr, None, "")
        self.timeouts.saved(done.stdout)
        return done.stdout

    def stats(self) -> str:
        """/proc/net/ip_vs of the namespace: real servers with ActiveConn and InActConn."""
        return netns_ops.call_in(self.netns, IPVS_THREAD_PROC_FILE.read_text)


class IpsetRunner:
    """`ipset restore -exist` and set removal, in one network namespace; `timeout` as for
    `IpvsRunner`."""

    def __init__(self, netns: str | None = None, timeout: float | None = None) -> None:
        self.netns = netns
        self.timeouts = _Timeouts(timeout)

    def restore(self, text: str) -> None:
        """Load `text` (ipset restore commands); `-exist` makes re-creating a set a no-op."""
        argv = ["ipset", "restore", "-exist"]
        done = netns_ops.run(argv, self.netns, text, self.timeouts.restore(text))
        if done.returncode != 0:
            raise _load_error("ipset restore", done.returncode, done.stderr, text)

    def save(self) -> str:
        """`ipset save`: every set and its members, as `create` / `add` lines."""
        done = netns_ops.run(["ipset", "save"], self.netns, timeout=self.timeouts.save())
        if done.returncode != 0:
            raise RuleLoadError("ipset save", done.returncode, done.stderr, None, "")
        self.timeouts.saved(done.stdout)
        return done.stdout

    def names(self) -> list[str]:
        done = netns_ops.run(["ipset", "list", "-n"], self.netns)
        if done.returncode != 0:
            raise RuleLoadError("ipset list", done.returncode, done.stderr, None, "")
        return [line.strip() for line in done.stdout.splitlines() if line.strip()]

    def destroy(self, names: Iterable[str]) -> None:
        """Destroy those of `names` that exist (a set still used by a rule cannot go: the
        error says so, remove the rule first)."""
        existing = set(self.names())
        doomed = [n for n in names if n in existing]
        if doomed:
            self.restore("".join(f"destroy {n}\n" for n in doomed))


_IPSET_WORDS = re.compile(r"^(create|add|del|flush|destroy)\s+(\S+)(?:\s+(\S+))?")


@dataclass
class FakeIpvs:
    """Records restore payloads; `save` renders the virtual servers they left behind."""

    payloads: list[str] = field(default_factory=list)
    has_ip_vs: bool = True
    fail_with: RuleLoadError | None = None
    # "-t 10.0.0.1:80" -> (scheduler/persistence words, {real server -> "-m -w 1"})
    table: dict[str, tuple[str, dict[str, str]]] = field(default_factory=dict)
    # "-t 10.0.0.1:80 10.244.1.2:80" -> (ActiveConn, InActConn) that `stats` reports
    connections: dict[str, tuple[int, int]] = field(default_factory=dict)

    def available(self) -> bool:
        return self.has_ip_vs

    def stats(self) -> str:
        """The table as /proc/net/ip_vs shows it (hex addresses), with `connections`."""

        def hexed(endpoint: str) -> str:
            address, _, port = endpoint.rpartition(":")
            return f"{int(ipaddress.IPv4Address(address)):08X}:{int(port):04X}"

        out = ["IP Virtual Server version 1.2.1 (size=4096)", "Prot LocalAddress:Port Scheduler"
               " Flags", "  -> RemoteAddress:Port Forward Weight ActiveConn InActConn"]  # fmt: skip
        names = {"-t": "TCP", "-u": "UDP", "--sctp-service": "SCTP"}
        for service, (options, reals) in self.table.items():
            flag, vip = service.split()
            out.append(f"{names[flag]}  {hexed(vip)} {options.removeprefix('-s ')}")
            for real, how in reals.items():
                active, inactive = self.connections.get(f"{service} {real}", (0, 0))
                weight = how.split("-w ")[-1].split()[0] if "-w " in how else "1"
                out.append(
                    f"  -> {hexed(real)}      Masq    {weight}      {active}          {inactive}"
                )
        return "".join(line + "\n" for line in out)

    def restore(self, text: str, clear: bool = False) -> None:
        if self.fail_with is not None:
            error, self.fail_with = self.fail_with, None
            raise error
        if clear:
            self.table.clear()
        self.payloads.append(text)
        for line in text.splitlines():
            words = line.split()
            if not words:
                continue
            verb, service = words[0], " ".join(words[1:3])
            if verb in ("-A", "-E"):
                reals = self.table.get(service, ("", {}))[1]
                self.table[service] = (" ".join(words[3:]), reals)
            elif verb == "-D":
                self.table.pop(service, None)
            elif verb in ("-a", "-e"):
                self.table[service][1][words[4]] = " ".join(words[5:])
            elif verb == "-d":
                self.table[service][1].pop(words[4], None)
            elif verb == "-C":
                self.table.clear()

    def save(self) -> str:
        out = []
        for service, (options, reals) in self.table.items():
            out.append(f"-A {service} {options}")
            out += [f"-a {service} -r {real} {how}" for real, how in reals.items()]
        return "".join(line + "\n" for line in out)


@dataclass
class FakeIpset:
    """Records restore payloads and tracks set members like `ipset restore -exist` would."""

    payloads: list[str] = field(default_factory=list)
    sets: dict[str, set[str]] = field(default_factory=dict)
    fail_with: RuleLoadError | None = None

    def restore(self, text: str) -> None:
        if self.fail_with is not None:
            error, self.fail_with = self.fail_with, None
            raise error
        self.payloads.append(text)
        for line in text.splitlines():
            match = _IPSET_WORDS.match(line)
            if match is None:
                continue
            verb, name, member = match.groups()
            if verb == "create":
                self.sets.setdefault(name, set())
            elif verb == "add" and member is not None:
                self.sets[name].add(member)
            elif verb == "del" and member is not None:
                self.sets[name].discard(member)
            elif verb == "flush":
                self.sets[name].clear()
            elif verb == "destroy":
                del self.sets[name]

    def names(self) -> list[str]:
        return sorted(self.sets)

    def destroy(self, names: Iterable[str]) -> None:
        doomed = [n for n in names if n in self.sets]
        if doomed:
            self.restore("".join(f"destroy {n}\n" for n in doomed))


@dataclass(frozen=True, slots=True)
class BindingPlan:
    """Addresses to add to and remove from the holder (sorted, disjoint)."""

    bind: tuple[str, ...]
    unbind: tuple[str, ...]


def plan_bindings(want: Iterable[str], have: Iterable[str]) -> BindingPlan:
    """Pure: what to bind and unbind to go from `have` to `want` (IPv4 addresses)."""
    wanted = {str(ipaddress.IPv4Address(a)) for a in want}
    held = {str(ipaddress.IPv4Address(a)) for a in have}
    key = ipaddress.IPv4Address
    return BindingPlan(tuple(sorted(wanted - held, key=key)), tuple(sorted(held - wanted, key=key)))


class ServiceAddressHolder:
    """The local link that makes service addresses local: `kube-ipvs0` or labelled `lo`.

    Opens a netlink socket per call (`open_netlink`), so holding one costs nothing between
    syncs and it can be built before the namespace exists.
    """

    def __init__(
        self,
        netns: str | None = None,
        open_netlink: Callable[[], NetlinkApi] | None = None,
    ) -> None:
        self.netns = netns
        self._open: Callable[[], NetlinkApi] = open_netlink or (lambda: Netlink(netns))
        self._device: str | None = None

    @property
    def label(self) -> str:
        return DUMMY_DEVICE if self.device() == DUMMY_DEVICE else LOOPBACK_LABEL

    def device(self) -> str:
        """Create the holder if needed: the dummy link when the kernel has the driver."""
        if self._device is None:
            nl = self._open()
            try:
                self._device = DUMMY_DEVICE if nl.ensure_dummy(DUMMY_DEVICE) else LOOPBACK
            finally:
                nl.close()
        return self._device

    def bound(self) -> set[str]:
        label = self.label
        nl = self._open()
        try:
            return {a.address for a in nl.labelled_addresses(label)}
        finally:
            nl.close()

    def bound_anywhere(self) -> set[str]:
        """Addresses carrying either holder label, without creating the holder."""
        nl = self._open()
        try:
            return {
                a.address
                for label in (DUMMY_DEVICE, LOOPBACK_LABEL)
                for a in nl.labelled_addresses(label)
            }
        finally:
            nl.close()

    def apply(self, plan: BindingPlan) -> None:
        """Bind and unbind the plan's addresses: a batch of netlink requests per few hundred
        addresses (10k ClusterIPs are 10k addresses), never one listing per address."""
        if not plan.bind and not plan.unbind:
            return
        device, label = self.device(), self.label
        nl = self._open()
        try:
            nl.add_addresses(device, [f"{address}/32" for address in plan.bind], label)
            nl.delete_addresses(device, [f"{address}/32" for address in plan.unbind])
        finally:
            nl.close()

    def release(self) -> int:
        """Remove every address carrying either label and the dummy link; returns how many
        addresses went."""
        removed = 0
        nl = self._open()
        try:
            for label, device in ((LOOPBACK_LABEL, LOOPBACK), (DUMMY_DEVICE, DUMMY_DEVICE)):
                held = [address.cidr for address in nl.labelled_addresses(label)]
                removed += nl.delete_addresses(device, held)
            nl.delete_link(DUMMY_DEVICE)
        finally:
            nl.close()
        self._device = None
        return removed
