"""Containers as processes in a real pod netns: sharing localhost, identity, spec semantics,
exit codes, stop, adoption by a new Runtime, start latency."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from podnet import procs
from podnet.agent.kubelet.cri import (
    ContainerConfig,
    ContainerNotFound,
    ContainerNotRunning,
    ImageError,
)
from podnet.agent.kubelet.runtime import Runtime, process_running
from podnet.agent.kubelet.volumes import HostMount
from podnet.agent.kubelet.zygote import LauncherZygote

pytestmark = [pytest.mark.root, pytest.mark.asyncio]

Harness = Any  # the conftest fixture type (conftest modules are not importable by name)


def session_members(sid: int) -> list[int]:
    """Live (non-zombie) processes whose session id is `sid`."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[3]) == sid and fields[0] != "Z":
                out.append(int(entry))
    return out


async def test_two_containers_of_a_pod_talk_over_localhost(harness: Harness) -> None:
    server = await harness.start(
        harness.busybox(
            "server", "echo hello-from-server > /tmp/index.html; exec httpd -f -p 8000 -h /tmp"
        )
    )
    client = await harness.start(
        harness.busybox(
            "client",
            "for i in $(seq 300); do wget -qO- http://127.0.0.1:8000/index.html && exit 0;"
            " sleep 0.05; done; exit 1",
        )
    )
    state = await harness.wait_exited(client.id, seconds=30)
    assert state.exit_code == 0, (harness.log(client.id), harness.log(server.id))
    assert harness.log(client.id) == "hello-from-server\n"
    assert harness.runtime.inspect(server.id).running
    # separate filesystems: the server's /tmp file is not in another container
    other = await harness.start(harness.busybox("probe", "test -e /tmp/index.html"))
    assert (await harness.wait_exited(other.id)).exit_code == 1


async def test_identity_is_the_pods_hostname_hosts_and_resolv_conf(harness: Harness) -> None:
    sandbox = harness.other_pod("identity-pod")
    st = await harness.start(
        harness.busybox(
            "c",
            "hostname; cat /etc/hostname; echo ---; cat /etc/hosts; echo ---; "
            "cat /etc/resolv.conf; echo ---; echo $HOSTNAME",
        ),
        sandbox=sandbox,
    )
    await harness.wait_exited(st.id)
    assert harness.log(st.id) == (
        "identity-pod\nidentity-pod\n---\n"
        + sandbox.hosts
        + "---\n"
        + sandbox.resolv_conf
        + "---\nidentity-pod\n"
    )
    # the machine's hostname is untouched (the container had its own UTS namespace)
    assert os.uname().nodename != "identity-pod"


async def test_container_joins_the_pod_netns(peer_harness: Harness) -> None:
    st = await peer_harness.start(peer_harness.busybox("c", "ip -4 -o addr"))
    await peer_harness.wait_exited(st.id)
    out = peer_harness.log(st.id)
    assert f"inet {peer_harness.net.pod_ip}/30" in out and "eth0" in out


async def test_host_path_mounts_read_only_and_writable(harness: Harness, tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "token").write_text("s3cret\n")
    notes = tmp_path / "notes.txt"
    notes.write_text("")
    mounts = (
        HostMount(str(creds), "/var/run/secrets/kubernetes.io/serviceaccount", True),
        HostMount(str(notes), "/notes.txt", False),
    )
    script = (
        "cat /var/run/secrets/kubernetes.io/serviceaccount/token; "
        "touch /var/run/secrets/kubernetes.io/serviceaccount/x 2>/dev/null || echo read-only; "
        "echo written > /notes.txt"
    )
    st = await harness.start(
        ContainerConfig("m", "busybox", ("sh", "-c", script), (), (), None, mounts=mounts)
    )
    await harness.wait_exited(st.id)
    assert harness.log(st.id) == "s3cret\nread-only\n"
    assert notes.read_text() == "written\n"
    assert sorted(p.name for p in creds.iterdir()) == ["token"]


async def test_command_args_env_and_working_dir(harness: Harness) -> None:
    # args only: busybox has no entrypoint, so the args are the whole command
    st = await harness.start(
        ContainerConfig(
            name="c",
            image="busybox",
            command=(),
            args=("sh", "-c", "pwd; echo \"$GREETING $(NAME)\"; echo '$$(NAME)'; echo $PATH"),
            env=(("NAME", "world"), ("GREETING", "hello $(NAME)")),
            working_dir="/srv/app",
        )
    )
    await harness.wait_exited(st.id)
    assert harness.log(st.id) == (
        "/srv/app\nhello world world\n$(NAME)\n"
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"
    )
    # neither command nor args: the image's cmd (sh), which ends at once on an empty stdin
    st = await harness.start(ContainerConfig("d", "busybox", (), (), (), None))
    assert (await harness.wait_exited(st.id)).exit_code == 0


async def test_exit_codes_and_start_errors_are_recorded(harness: Harness) -> None:
    st = await harness.start(harness.busybox("c", "echo out; echo err >&2; exit 7"))
    done = await harness.wait_exited(st.id)
    assert (done.exit_code, done.reason, done.running, done.pid) == (7, "Error", False, None)
    assert done.started_at is not None and done.finished_at is not None
    assert done.finished_at >= done.started_at
    assert harness.log(st.id) in ("out\nerr\n", "err\nout\n")
    ok = await harness.start(harness.busybox("ok", "true"))
    assert (await harness.wait_exited(ok.id)).reason == "Completed"

    missing = await harness.start(
        ContainerConfig("m", "busybox", ("no-such-binary",), (), (), None)
    )
    assert (missing.running, missing.exit_code, missing.reason) == (False, 128, "StartError")
    assert missing.message == 'exec: "no-such-binary": executable file not found in $PATH'

    with pytest.raises(ImageError) as info:
        await harness.start(ContainerConfig("x", "example.com/nope:1", (), (), (), None))
    assert info.value.reason == "ErrImagePull"
    assert "podnet image import" in info.value.message


async def test_stop_uses_sigterm_then_sigkill_after_the_grace_period(harness: Harness) -> None:
    polite = await harness.start(
        harness.busybox("polite", "trap 'exit 0' TERM; echo ready; while :; do sleep 0.05; done")
    )
    stubborn = await harness.start(
        harness.busybox("stubborn", "trap '' TERM; echo ready; while :; do sleep 0.05; done")
    )
    await harness.wait_log(polite.id, "ready")
    await harness.wait_log(stubborn.id, "ready")
    # SIGTERM honoured: exit 0, and stop returns then, long before a 10-minute grace ends
    state = await asyncio.wait_for(harness.runtime.stop(polite.id, grace_seconds=600), 60)
    assert state.exit_code == 0
    # SIGTERM ignored: SIGKILL (137), and not before the grace period has passed
    t0 = time.monotonic()
    state = await harness.runtime.stop(stubborn.id, grace_seconds=0.5)
    assert state.exit_code == 137
    assert time.monotonic() - t0 >= 0.5
    # the shim is gone too (a zombie until init reaps it), and so is everything the
    # container had started: no process of the container's session is left
    await asyncio.sleep(0.3)
    recorded = [
        r for r in procs.recorded(harness.runtime.pids_dir) if r.label.endswith(stubborn.id)
    ]
    assert len(recorded) == 2
    assert not [r for r in recorded if process_running(r.pid, r.start_time)]
    assert not session_members(stubborn.pid)


async def test_containers_survive_the_runtime_and_a_new_runtime_adopts_them(
    runtime_factory: Callable[[], Runtime], harness: Harness
) -> None:
    first = runtime_factory()
    st = await first.start(
        harness.sandbox, harness.busybox("long", "echo started; exec sleep 1000"), 3
    )
    short = await first.start(harness.sandbox, harness.busybox("short", "sleep 0.3; exit 5"), 0)
    pid = st.pid
    del first  # the agent goes away; its containers do not
    await asyncio.sleep(0.6)  # "short" exits while no runtime is watching
    second = runtime_factory()
    adopted = {s.id: s for s in second.list(harness.sandbox.pod_uid)}
    assert adopted[st.id].running and adopted[st.id].pid == pid
    assert adopted[st.id].attempt == 3
    assert (adopted[short.id].running, adopted[short.id].exit_code) == (False, 5)
    stopped = await second.stop(st.id, grace_seconds=2)
    assert stopped.exit_code == 143  # sleep dies of SIGTERM: 128 + 15
    assert second.log_path(st.id).read_bytes().endswith(b" stdout F started\n")


async def test_remove_keeps_the_log_for_previous_and_cleanup_pod_removes_all(
    harness: Harness,
) -> None:
    runtime: Runtime = harness.runtime
    first = await harness.start(harness.busybox("c", "echo attempt-0"), 0)
    await harness.wait_exited(first.id)
    second = await harness.start(harness.busybox("c", "echo attempt-1; exec sleep 1000"), 1)
    runtime.remove(first.id)
    with pytest.raises(ContainerNotFound):
        runtime.inspect(first.id)
    assert runtime.log_path(first.id).read_bytes().endswith(b" stdout F attempt-0\n")
    assert runtime.previous_log_path(second.id) == runtime.log_path(first.id)
    await runtime.stop(second.id, grace_seconds=0.2)
    third = await harness.start(harness.busybox("c", "echo attempt-2"), 2)
    runtime.remove(second.id)
    assert not runtime.log_path(second.id).parent.joinpath("0.log").exists()
    assert runtime.previous_log_path(third.id) == runtime.log_path(second.id)
    assert [s.id for s in runtime.list(harness.sandbox.pod_uid)] == [third.id]

    runtime.cleanup_pod(harness.sandbox.pod_uid)
    assert runtime.list(harness.sandbox.pod_uid) == []
    assert not (runtime.logs_dir / harness.sandbox.pod_uid).exists()
    assert not (runtime.pod_files_dir / harness.sandbox.pod_uid).exists()


async def test_stdin_and_tty_keep_a_shell_alive(harness: Harness) -> None:
    tty = await harness.start(
        ContainerConfig("tty", "busybox", ("sh",), (), (), None, tty=True, stdin=True)
    )
    piped = await harness.start(
        ContainerConfig("piped", "busybox", ("sh",), (), (), None, stdin=True)
    )
    closed = await harness.start(ContainerConfig("closed", "busybox", ("sh",), (), (), None))
    assert (await harness.wait_exited(closed.id)).exit_code == 0
    await asyncio.sleep(0.3)
    assert harness.runtime.inspect(tty.id).running
    assert harness.runtime.inspect(piped.id).running
    tty_pid = harness.runtime.inspect(tty.id).pid
    assert os.readlink(f"/proc/{tty_pid}/fd/0").startswith("/dev/pts/")


async def test_exec_sync_runs_in_the_container(harness: Harness) -> None:
    st = await harness.start(
        harness.busybox(
            "c", "echo marker > /tmp/m; echo ready; exec sleep 1000", working_dir="/work"
        ),
        sandbox=harness.other_pod("exec-pod"),
    )
    await harness.wait_log(st.id, "ready")
    runtime: Runtime = harness.runtime
    assert runtime.nsenter is not None  # util-linux: the fast path
    for nsenter in (runtime.nsenter, None):  # and the launcher, used without nsenter
        runtime.nsenter = nsenter
        code, out = await runtime.exec_sync(
            st.id, ["sh", "-c", "hostname; pwd; cat /tmp/m; echo $HOSTNAME; exit 4"], 5
        )
        assert (code, out) == (4, b"exec-pod\n/work\nmarker\nexec-pod\n"), nsenter
        code, out = await runtime.exec_sync(st.id, ["no-such-thing"], 5)
        assert code == 127 and b"no-such-thing" in out, (nsenter, out)
        with pytest.raises(TimeoutError):  # sleep 10 finishing would return its exit code
            await runtime.exec_sync(st.id, ["sleep", "10"], 0.3)
    await runtime.stop(st.id, grace_seconds=0)
    with pytest.raises(ContainerNotRunning):
        await runtime.exec_sync(st.id, ["true"], 5)


async def test_start_latency(harness: Harness) -> None:
    """start() with a cached image: target p99 <= 1 s; the numbers are printed (-s)."""
    await harness.start(harness.busybox("warm", "true"))
    samples = []
    for i in range(10):
        t0 = time.monotonic()
        await harness.start(harness.busybox(f"c{i}", "exec sleep 1000"))
        samples.append(time.monotonic() - t0)
    samples.sort()
    print(
        f"\nruntime.start latency over {len(samples)} starts: p50 "
        f"{statistics.median(samples) * 1000:.0f} ms, max {samples[-1] * 1000:.0f} ms"
    )
    assert statistics.median(samples) < 1.0  # the p99 target, kept loose for loaded CI


async def test_a_killed_shim_takes_its_container_along(harness: Harness) -> None:
    """`podnet down` may SIGKILL shims: their containers must not outlive them."""
    st = await harness.start(harness.busybox("c", "exec sleep 1000"))
    shim = next(r for r in procs.recorded(harness.runtime.pids_dir) if r.label == f"shim-{st.id}")
    os.kill(shim.pid, signal.SIGKILL)
    for _ in range(100):
        if not process_running(st.pid, procs.process_start_time(st.pid)):
            break
        await asyncio.sleep(0.02)
    state = harness.runtime.inspect(st.id)
    assert (state.running, state.reason, state.exit_code) == (False, "Unknown", 255)
    assert "gone without recording an exit code" in (state.message or "")


def ip(*args: str, check: bool = True) -> int:
    return subprocess.run(["ip", *args], capture_output=True, check=check).returncode


async def test_containers_do_not_pin_other_pods_namespaces(harness: Harness) -> None:
    """A container's mount namespace starts as a copy of the machine's, including every
    /run/netns bind mount; pivot_root + detaching the old root must drop those copies, or a
    deleted pod's netns (and its veth) would live on while any other container runs."""
    other = f"pnt4-{secrets.token_hex(3)}-gone"
    link = f"pt4{secrets.token_hex(3)}"
    ip("netns", "add", other)
    try:
        ip("link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", other)
        await harness.start(harness.busybox("c", "exec sleep 1000"))
        ip("netns", "del", other)
        for _ in range(50):
            if ip("link", "show", link, check=False):
                break
            await asyncio.sleep(0.02)
        assert ip("link", "show", link, check=False) != 0  # gone with its namespace
    finally:
        ip("link", "del", link, check=False)
        ip("netns", "del", other, check=False)


async def test_the_warm_launcher_is_optional_and_replaced_when_it_dies(harness: Harness) -> None:
    runtime: Runtime = harness.runtime
    first = await harness.start(harness.busybox("a", "exec sleep 1000"))
    zygote = runtime.zygote.pid
    assert zygote is not None and process_running(zygote, procs.process_start_time(zygote))
    os.kill(zygote, signal.SIGKILL)
    # the next start notices, falls back to `launcher run`, and a new zygote follows later
    second = await harness.start(harness.busybox("b", "exec sleep 1000"))
    assert second.running, second
    third = await harness.start(harness.busybox("c", "exec sleep 1000"))
    assert third.running and runtime.zygote.pid not in (None, zygote)
    # without any zygote at all (it cannot start), containers still start
    runtime.close()
    runtime.zygote = LauncherZygote(
        ["/nonexistent/python"], runtime.pids_dir, runtime.containers_dir / "z.log"
    )
    fourth = await harness.start(harness.busybox("d", "exec sleep 1000"))
    assert fourth.running, fourth
    assert {s.name for s in runtime.list(harness.sandbox.pod_uid) if s.running} == {
        "a",
        "b",
        "c",
        "d",
    }
    assert first.running


async def test_closing_the_runtime_ends_its_warm_launcher(harness: Harness) -> None:
    runtime: Runtime = harness.runtime
    await harness.start(harness.busybox("a", "true"))
    zygote = runtime.zygote.pid
    assert zygote is not None
    start = procs.process_start_time(zygote)
    runtime.close()
    for _ in range(100):
        if not process_running(zygote, start):
            break
        await asyncio.sleep(0.02)
    assert not process_running(zygote, start)
    assert not (runtime.pids_dir / f"zygote-{zygote}.pid").exists()


def processes_in_mount_ns(dev_ino: tuple[int, int]) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ns = os.stat(f"/proc/{entry}/ns/mnt")
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if (ns.st_dev, ns.st_ino) == dev_ino and stat[stat.rindex(")") + 2] != "Z":
                out.append(int(entry))
    return out


def spawn_detached(argv: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


async def test_stopping_a_container_ends_its_exec_sessions_too(harness: Harness) -> None:
    st = await harness.start(harness.busybox("c", "echo ready; exec sleep 1000"))
    await harness.wait_log(st.id, "ready")
    ns = os.stat(f"/proc/{st.pid}/ns/mnt")
    mount_ns = (ns.st_dev, ns.st_ino)
    # an exec that outlives its client, and a daemon that left the container's session
    lingering = spawn_detached(
        harness.runtime.exec_command_line(st.id, ["sh", "-c", "setsid sleep 777 & exec sleep 778"])
    )
    try:
        for _ in range(100):
            if len(processes_in_mount_ns(mount_ns)) >= 3:
                break
            await asyncio.sleep(0.02)
        assert len(processes_in_mount_ns(mount_ns)) >= 3
        await harness.runtime.stop(st.id, grace_seconds=0.5)
        await asyncio.sleep(0.1)
        assert processes_in_mount_ns(mount_ns) == []
    finally:
        if lingering.poll() is None:
            lingering.kill()
        lingering.wait()
