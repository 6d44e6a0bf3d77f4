"""host-local IPAM: addresses from one range, one file per address, safe across processes.

The on-disk layout is upstream's (`plugins/ipam/host-local/backend/disk`), so the files can be
read by anyone who knows the real plugin:

    <data_dir>/<network>/<ip>                 "<containerID>\\r\\n<ifname>", created O_EXCL, 0600
    <data_dir>/<network>/last_reserved_ip.0   the last address handed out, 0600
    <data_dir>/<network>/lock                 flock(2) held for every allocate/release

Invariants:
- An address is handed out only by creating its file with O_EXCL, so two allocators (threads
  or processes) can never hand out the same address; the flock makes the scan + reserve one
  step, as upstream does.
- Allocation is round-robin: it starts just after `last_reserved_ip.0` and wraps, so a just
  released address is not reused at once. The gateway is never handed out.
- Everything is on disk: a new `HostLocal` over the same directory (an agent restart) continues
  where the old one stopped.

`AddressRange` and `candidates` are pure and unit-tested; `HostLocal` does the file I/O.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from podnet.agent.cni.errors import UNKNOWN, CniError

LINE_BREAK = "\r\n"
LAST_RESERVED = "last_reserved_ip.0"
LOCK = "lock"


@dataclass(frozen=True, slots=True)
class AddressRange:
    """One host-local range after upstream's `Canonicalize` filled in the defaults."""

    network: ipaddress.IPv4Network
    start: ipaddress.IPv4Address
    end: ipaddress.IPv4Address
    gateway: ipaddress.IPv4Address

    @classmethod
    def from_subnet(
        cls,
        subnet: str,
        gateway: str | None = None,
        range_start: str | None = None,
        range_end: str | None = None,
    ) -> AddressRange:
        network = ipaddress.IPv4Network(subnet)
        if network.prefixlen > 30:
            raise ValueError(f"network {subnet} too small to allocate from")
        start = ipaddress.IPv4Address(range_start) if range_start else network[1]
        end = ipaddress.IPv4Address(range_end) if range_end else network[-2]
        gw = ipaddress.IPv4Address(gateway) if gateway else network[1]
        if not (network[1] <= start <= end <= network[-2]):
            raise ValueError(f"range {start}-{end} is not inside the usable part of {subnet}")
        return cls(network, start, end, gw)

    def __contains__(self, address: object) -> bool:
        return isinstance(address, ipaddress.IPv4Address) and self.start <= address <= self.end

    def describe(self) -> str:
        return f"{self.start}-{self.end}"


def candidates(
    rng: AddressRange, last_reserved: ipaddress.IPv4Address | None
) -> Iterator[ipaddress.IPv4Address]:
    """Addresses in the order host-local tries them: after the last reserved one, wrapping
    once around the range, skipping the gateway."""
    size = int(rng.end) - int(rng.start) + 1
    if last_reserved is not None and last_reserved in rng:
        first = int(last_reserved) + 1 - int(rng.start)
    else:
        first = 0
    for step in range(size):
        address = ipaddress.IPv4Address(int(rng.start) + (first + step) % size)
        if address != rng.gateway:
            yield address


def _owner_text(container_id: str, ifname: str) -> str:
    return container_id.strip() + LINE_BREAK + ifname


class HostLocal:
    """The host-local store of one network: `<data_dir>/<network>/`."""

    def __init__(self, directory: Path, rng: AddressRange) -> None:
        self.directory = directory
        self.range = rng

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o755)
            fd = os.open(self.directory / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise CniError(UNKNOWN, f"cannot open IPAM store {self.directory}", str(exc)) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the flock

    def _address_files(self) -> Iterator[tuple[ipaddress.IPv4Address, Path]]:
        for path in self.directory.iterdir():
            try:
                address = ipaddress.IPv4Address(path.name)
            except ValueError:
                continue  # lock, last_reserved_ip.*
            yield address, path

    def _owned_by(self, container_id: str, ifname: str) -> list[tuple[ipaddress.IPv4Address, Path]]:
        want = _owner_text(container_id, ifname)
        found = []
        for address, path in self._address_files():
            with contextlib.suppress(FileNotFoundError):
                text = path.read_bytes().decode().strip()
                # files written by old plugin versions hold only the container id
                if text == want or text == container_id.strip():
                    found.append((address, path))
        return found

    def _last_reserved(self) -> ipaddress.IPv4Address | None:
        try:
            return ipaddress.IPv4Address((self.directory / LAST_RESERVED).read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def allocate(self, container_id: str, ifname: str) -> ipaddress.IPv4Interface:
        """Reserve the next free address for (container, ifname); never a duplicate."""
        with self._locked():
            for address, _ in self._owned_by(container_id, ifname):
                if address in self.range:
                    raise CniError(
                        UNKNOWN,
                        f"{address} has been allocated to {container_id}, "
                        "duplicate allocation is not allowed",
                    )
            for address in candidates(self.range, self._last_reserved()):
                if self._reserve(address, container_id, ifname):
                    return ipaddress.IPv4Interface(f"{address}/{self.range.network.prefixlen}")
        raise CniError(UNKNOWN, f"no IP addresses available in range set: {self.range.describe()}")

    def _reserve(self, address: ipaddress.IPv4Address, container_id: str, ifname: str) -> bool:
        path = self.directory / str(address)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            return False
        except OSError as exc:
            raise CniError(UNKNOWN, f"cannot reserve {address}", str(exc)) from exc
        try:
            os.write(fd, _owner_text(container_id, ifname).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        last = self.directory / LAST_RESERVED
        tmp = last.with_name(LAST_RESERVED + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, str(address).encode())
        finally:
            os.close(fd)
        tmp.replace(last)
        return True

    def release(self, container_id: str, ifname: str) -> list[ipaddress.IPv4Address]:
        """Free every address held by (container, ifname); returns them (empty: nothing held)."""
        if not self.directory.is_dir():
            return []
        with self._locked():
            released = []
            for address, path in self._owned_by(container_id, ifname):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                released.append(address)
            return sorted(released)

    def lookup(self, container_id: str, ifname: str) -> list[ipaddress.IPv4Address]:
        """The addresses (container, ifname) holds, without changing anything."""
        if not self.directory.is_dir():
            return []
        return sorted(a for a, _ in self._owned_by(container_id, ifname))

    def allocated(self) -> dict[ipaddress.IPv4Address, tuple[str, str]]:
        """Every reserved address -> (container id, ifname)."""
        out: dict[ipaddress.IPv4Address, tuple[str, str]] = {}
        if not self.directory.is_dir():
            return out
        for address, path in self._address_files():
            with contextlib.suppress(FileNotFoundError):
                cid, _, ifname = path.read_bytes().decode().partition(LINE_BREAK)
                out[address] = (cid.strip(), ifname.strip())
        return out
