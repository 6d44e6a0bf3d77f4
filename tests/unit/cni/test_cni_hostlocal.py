"""host-local IPAM without the kernel: range defaults, iteration order, files, concurrency."""

from __future__ import annotations

import ipaddress
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from podnet.agent.cni.errors import CniError
from podnet.agent.cni.hostlocal import AddressRange, HostLocal, candidates


def ips(*last_octets: int) -> list[ipaddress.IPv4Address]:
    return [ipaddress.IPv4Address(f"10.244.1.{n}") for n in last_octets]


def test_range_defaults_follow_upstream_canonicalize() -> None:
    rng = AddressRange.from_subnet("10.244.1.0/24")
    assert (str(rng.start), str(rng.end), str(rng.gateway)) == (
        "10.244.1.1",
        "10.244.1.254",
        "10.244.1.1",
    )
    with pytest.raises(ValueError, match="too small"):
        AddressRange.from_subnet("10.244.1.0/31")
    with pytest.raises(ValueError, match="not inside"):
        AddressRange.from_subnet("10.244.1.0/24", range_end="10.244.1.255")


def test_candidates_start_after_last_reserved_wrap_and_skip_gateway() -> None:
    rng = AddressRange.from_subnet("10.244.1.0/29")  # .1 (gateway) .. .6
    assert list(candidates(rng, None)) == ips(2, 3, 4, 5, 6)
    assert list(candidates(rng, ips(4)[0])) == ips(5, 6, 2, 3, 4)
    assert list(candidates(rng, ips(6)[0])) == ips(2, 3, 4, 5, 6)
    # a last_reserved outside the range (config changed) restarts at the beginning
    assert list(candidates(rng, ipaddress.IPv4Address("10.9.9.9"))) == ips(2, 3, 4, 5, 6)


def store(tmp_path: Path, subnet: str = "10.244.1.0/24") -> HostLocal:
    return HostLocal(tmp_path / "cbr0", AddressRange.from_subnet(subnet))


def test_files_are_upstream_format(tmp_path: Path) -> None:
    s = store(tmp_path)
    assert str(s.allocate("abc", "eth0")) == "10.244.1.2/24"
    assert (tmp_path / "cbr0" / "10.244.1.2").read_bytes() == b"abc\r\neth0"
    assert (tmp_path / "cbr0" / "10.244.1.2").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "cbr0" / "last_reserved_ip.0").read_text() == "10.244.1.2"
    assert (tmp_path / "cbr0" / "lock").exists()


def test_duplicate_allocation_for_same_container_and_interface_is_refused(tmp_path: Path) -> None:
    s = store(tmp_path)
    s.allocate("abc", "eth0")
    with pytest.raises(CniError, match="duplicate allocation is not allowed"):
        s.allocate("abc", "eth0")
    assert str(s.allocate("abc", "eth1")) == "10.244.1.3/24"


def test_release_lookup_and_old_format_files(tmp_path: Path) -> None:
    s = store(tmp_path)
    s.allocate("abc", "eth0")
    (tmp_path / "cbr0" / "10.244.1.9").write_bytes(b"old-style")  # pre-ifname plugin versions
    assert s.lookup("abc", "eth0") == ips(2)
    assert s.release("abc", "eth0") == ips(2)
    assert s.release("abc", "eth0") == []
    assert s.release("old-style", "eth0") == ips(9)
    assert s.allocated() == {}
    assert HostLocal(tmp_path / "missing", s.range).release("x", "eth0") == []


def test_threads_never_get_the_same_address(tmp_path: Path) -> None:
    s = store(tmp_path, "10.244.1.0/26")  # 61 usable after the gateway
    with ThreadPoolExecutor(max_workers=8) as pool:
        got = list(pool.map(lambda i: s.allocate(f"c{i}", "eth0"), range(40)))
    assert len(set(got)) == 40


def allocate_in_a_child(directory: Path, name: str, count: int) -> tuple[int, int]:
    """Fork a process that allocates `count` addresses and writes them to a pipe: (pid, read
    end). Forked, not started: the child needs no interpreter start and no imports (three of
    those took most of this test's time and, on a loaded machine, its whole timeout)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        code = 1
        try:
            os.close(read)
            s = HostLocal(directory, AddressRange.from_subnet("10.244.1.0/24"))
            out = "".join(f"{s.allocate(f'{name}-{i}', 'eth0')}\n" for i in range(count))
            os.write(write, out.encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    return pid, read


def test_processes_never_get_the_same_address(tmp_path: Path) -> None:
    children = [allocate_in_a_child(tmp_path / "cbr0", f"p{n}", 15) for n in range(3)]
    flat = []
    for pid, read in children:
        with os.fdopen(read) as pipe:
            flat += pipe.read().split()
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    assert len(flat) == 45 and len(set(flat)) == 45


def test_exhaustion_message(tmp_path: Path) -> None:
    s = store(tmp_path, "10.244.1.0/30")  # .1 gateway, .2 the only address
    s.allocate("a", "eth0")
    with pytest.raises(
        CniError, match=r"no IP addresses available in range set: 10.244.1.1-10.244.1.2"
    ):
        s.allocate("b", "eth0")
