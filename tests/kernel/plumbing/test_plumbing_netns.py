"""Named namespaces for real: create, list, enter, call_in, run, delete."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from podnet.kernel import netns

pytestmark = pytest.mark.root


def test_create_list_delete_roundtrip(new_netns: Callable[[], str]) -> None:
    name = new_netns()
    assert netns.exists(name)
    assert name in netns.list_names("pnt1-")
    assert netns.path(name).as_posix() == f"/run/netns/{name}"
    assert netns.delete(name) is True
    assert netns.delete(name) is False  # idempotent
    assert not netns.exists(name)


def test_create_twice_is_an_error_that_names_the_namespace(new_netns: Callable[[], str]) -> None:
    name = new_netns()
    with pytest.raises(netns.NetnsError, match=name):
        netns.create(name)
    assert netns.ensure(name) == netns.path(name)


def test_enter_switches_only_for_the_block(new_netns: Callable[[], str]) -> None:
    name = new_netns()
    home = netns.current_inode()
    with netns.enter(name):
        assert netns.current_inode() == netns.inode(name)
    assert netns.current_inode() == home


def test_call_in_and_run_work_inside_without_moving_caller(
    new_netns: Callable[[], str],
) -> None:
    name = new_netns()
    home = netns.current_inode()
    assert netns.call_in(name, netns.current_inode) == netns.inode(name)
    # a tool forked from inside sees the namespace: only lo exists there
    done = netns.run(["cat", "/proc/net/dev"], name)
    devices = [line.split(":")[0].strip() for line in done.stdout.splitlines()[2:]]
    assert devices == ["lo"]
    assert netns.current_inode() == home


def test_errors_are_raised_on_the_caller_thread(new_netns: Callable[[], str]) -> None:
    name = new_netns()

    def boom() -> None:
        raise ValueError("inside")

    with pytest.raises(ValueError, match="inside"):
        netns.call_in(name, boom)
    with pytest.raises(netns.NetnsError, match="does not exist"):
        netns.call_in("pnt1-missing-xyz", netns.current_inode)
