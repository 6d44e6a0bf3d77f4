"""The container launcher and shim: `python -m podnet.agent.kubelet.launcher run SPEC`.

One process per container, in the containerd-shim design, so containers outlive the agent:

1. The runtime starts `launcher run <container dir>/spec.json` in a new session with stdout
   a pipe. The launcher forks (the shim) and exits at once, so the shim is nobody's child
   but init's: an agent restart neither kills nor orphans-as-zombie anything.
2. The shim (`run_shim`) makes itself a child subreaper, creates the container's stdio
   (pipes, or a pty when `tty`), and forks the container process, which
   - starts a new session (so everything it spawns can be found again) and asks for SIGKILL
     if the shim dies (`podnet down` may SIGKILL shims; no container is left behind);
   - joins the pod's network namespace, unshares a mount and a UTS namespace, sets the
     hostname, mounts the image as an overlay (image read-only below, a per-container upper
     layer above), /proc, /sys (ro), a minimal /dev, /tmp, then the image's read-only
     host binds, the pod's /etc/hosts, /etc/resolv.conf, /etc/hostname, pivots into it, and execs
     the command. A failure before exec is reported over a close-on-exec pipe.
3. The shim records its own and the container's pid (`podnet.procs`, in the spec's
   `pids_dir`), writes `started.json` (pids, start time), answers the runtime with one JSON line
   on stdout, then copies the container's output into the log file in the CRI format
   (`logformat.py`), forwards SIGTERM/SIGINT to the container, and when the container exits
   kills what is left of it (its session and its mount namespace), drains the output and
   writes `exit.json` atomically.

`launcher zygote FD` is the same start path without an interpreter start per container: the
runtime keeps one warm launcher and sends it spec paths (see `serve_zygote`); `run` remains
the fallback.

`launcher exec CONTAINER_DIR [--console-fd N] [--error-fd N] -- ARGV...` enters a running
container's network, UTS and mount namespaces through its pid (nsenter-style), applies the
container's env and working dir and execs ARGV; a failure to exec is written to `--error-fd`
(as "<exit code> <message>") and to stderr, with shell exit codes (127 not found, 126 not
executable). With `--console-fd` (a unix socket) it allocates a pty inside the container and
sends the master over that socket, as runc's console socket does; a pty allocated outside
would belong to the machine's devpts and `tty` in the container would say "not a tty".

Invariants: the launcher imports only the standard library and podnet's stdlib-only modules
(it runs on every container start and exec); it never runs a user string through a shell;
`exit.json` exists only once the exit code is final.
"""

# The launcher works on str paths between fork and exec, where os.* calls are what runs:
# ruff: noqa: PTH101, PTH102, PTH103, PTH105, PTH110, PTH112, PTH114, PTH115, PTH116, PTH118, PTH120, PTH123, PTH208, PTH211
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import selectors
import signal
import socket
import stat
import sys
import termios
import time
from datetime import UTC, datetime
from pathlib import Path

from podnet.agent.kubelet import syscalls as sc
from podnet.agent.kubelet.attachsocket import SOCKET_NAME as ATTACH_SOCKET
from podnet.agent.kubelet.attachsocket import STDERR, STDOUT, AttachServer
from podnet.agent.kubelet.execsocket import SOCKET_NAME as EXEC_SOCKET
from podnet.agent.kubelet.execsocket import ExecProcess, ExecRequest, ExecServer
from podnet.agent.kubelet.launchspec import (
    EXIT_FILE,
    STARTED_FILE,
    LaunchSpec,
    atomic_write,
)
from podnet.agent.kubelet.logformat import LineSplitter, rotated_path
from podnet.procs import process_start_time, record

START_FAILURE_EXIT_CODE = 128  # containerd's exit code for a container that never started
DRAIN_SECONDS = 2.0  # after the container exits, how long to wait for its output pipes

DEVICES = (  # name, major, minor (the OCI runtime spec's default devices)
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
)
DEV_LINKS = (
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
    ("ptmx", "pts/ptmx"),
)


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


# -- path resolution inside a root (images may hold absolute symlinks) ----------------------


def resolve_in_root(root: str, path: str) -> str:
    """The host path of `path` inside `root`, following symlinks as if `root` were `/`.

    An absolute symlink in an image (`/etc/resolv.conf -> /run/resolv.conf`) must not lead
    to the machine's file of that name.
    """
    parts = [p for p in path.split("/") if p]
    current = root
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == ".":
            continue
        if part == "..":
            current = os.path.dirname(current) if current != root else root
            continue
        candidate = os.path.join(current, part)
        if os.path.islink(candidate):
            hops += 1
            if hops > 40:
                raise OSError(40, f"too many symlinks resolving {path} in the image")
            target = os.readlink(candidate)
            if target.startswith("/"):
                current = root
            parts = [p for p in target.split("/") if p] + parts
            continue
        current = candidate
    return current


def ensure_mountpoint(root: str, inside: str, directory: bool) -> str:
    target = resolve_in_root(root, inside)
    if directory:
        os.makedirs(target, exist_ok=True)
    elif not os.path.exists(target):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "a"):
            pass
    return target


# -- building the container's world (runs in the forked child, before exec) ----------------


def setup_dev(dev: str) -> None:
    sc.mount("tmpfs", dev, "tmpfs", sc.MS_NOSUID | sc.MS_STRICTATIME, "mode=755,size=65536k")
    for name, major, minor in DEVICES:
        os.mknod(os.path.join(dev, name), stat.S_IFCHR | 0o666, os.makedev(major, minor))
        os.chmod(os.path.join(dev, name), 0o666)  # noqa: S103 - device nodes are world-rw
    pts = os.path.join(dev, "pts")
    os.mkdir(pts, 0o755)
    sc.mount(
        "devpts",
        pts,
        "devpts",
        sc.MS_NOSUID | sc.MS_NOEXEC,
        "newinstance,ptmxmode=0666,mode=0620,gid=5",
    )
    shm = os.path.join(dev, "shm")
    os.mkdir(shm, 0o1777)
    sc.mount(
        "shm", shm, "tmpfs", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC, "mode=1777,size=65536k"
    )
    for name, target in DEV_LINKS:
        os.symlink(target, os.path.join(dev, name))


def enter_container(spec: LaunchSpec) -> None:
    try:
        netns_fd = os.open(spec.netns, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise OSError(2, f"the pod's network namespace {spec.netns} does not exist") from None
    try:
        sc.setns(netns_fd, sc.CLONE_NEWNET, spec.netns)
    finally:
        os.close(netns_fd)
    sc.unshare(sc.CLONE_NEWNS | sc.CLONE_NEWUTS)
    sc.sethostname(spec.hostname)
    sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
    root = spec.merged_dir
    sc.mount(
        "overlay",
        root,
        "overlay",
        0,
        f"lowerdir={spec.rootfs},upperdir={spec.upper_dir},workdir={spec.work_dir}",
    )
    safe = sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC
    sc.mount("proc", ensure_mountpoint(root, "/proc", True), "proc", safe)
    sc.mount("sysfs", ensure_mountpoint(root, "/sys", True), "sysfs", safe | sc.MS_RDONLY)
    setup_dev(ensure_mountpoint(root, "/dev", True))
    tmp = ensure_mountpoint(root, "/tmp", True)
    sc.mount("tmpfs", tmp, "tmpfs", sc.MS_NOSUID | sc.MS_NODEV, "mode=1777")
    # host binds last, so one under /tmp (a checkout's venv there) lands on top of the
    # container's tmpfs instead of being hidden by it
    for bind in sorted(spec.binds, key=lambda b: b.target.count("/")):
        target = ensure_mountpoint(root, bind.target, os.path.isdir(bind.source))
        sc.mount(bind.source, target, None, sc.MS_BIND | sc.MS_REC)
        if bind.read_only:
            sc.mount(None, target, None, sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY)
    for inside, host_file in spec.etc_files:
        target = ensure_mountpoint(root, inside, False)
        sc.mount(host_file, target, None, sc.MS_BIND)
    # pivot_root(".", ".") stacks the old root on the new one; detaching it leaves only ours
    os.chdir(root)
    sc.pivot_root(".", ".")
    sc.umount2(".", sc.MNT_DETACH)
    os.chdir("/")


def exec_failure(argv0: str, exc: OSError) -> tuple[int, str]:
    """Shell-style exit code and runc-style message for a failed exec."""
    if isinstance(exc, FileNotFoundError):
        if "/" in argv0:
            return 127, f'exec: "{argv0}": stat {argv0}: no such file or directory'
        return 127, f'exec: "{argv0}": executable file not found in $PATH'
    if isinstance(exc, PermissionError):
        return 126, f'exec: "{argv0}": permission denied'
    return 126, f'exec: "{argv0}": {exc.strerror or exc}'


def exec_command(argv: tuple[str, ...] | list[str], env: dict[str, str]) -> None:
    """exec, or raise OSError; restores the signal dispositions Python changed."""
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
    os.execvpe(argv[0], list(argv), env)  # noqa: S606 - argv from the spec, no shell


def attach_container_pty(console: socket.socket) -> None:
    """Open a pty *inside* the container (its own devpts, so `tty` names it), send the master
    side over `console` (runc's console socket), and make the slave this process's stdio and
    controlling terminal. Call after entering the container's mount namespace."""
    master, slave = os.openpty()
    socket.send_fds(console, [b"pty"], [master])
    os.close(master)
    console.close()
    for target in (0, 1, 2):
        os.dup2(slave, target)
    if slave > 2:
        os.close(slave)
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def receive_pty(console: socket.socket) -> int | None:
    """The pty master sent by `attach_container_pty`, or None if the sender failed first."""
    _msg, fds, _flags, _addr = socket.recv_fds(console, 16, 1)
    return fds[0] if fds else None


def container_child(
    spec: LaunchSpec,
    stdio: tuple[int, int, int] | None,
    console: socket.socket | None,
    shim_pid: int,
    error_w: int,
) -> None:
    """In the forked child: never returns."""
    code, message = START_FAILURE_EXIT_CODE, "unknown error"
    try:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        os.setsid()
        sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != shim_pid:
            os._exit(START_FAILURE_EXIT_CODE)
        if stdio is not None:
            for target, fd in enumerate(stdio):
                os.dup2(fd, target)
        stage = "setting up the container"
        try:
            os.umask(0)
            enter_container(spec)
            os.umask(0o022)
            stage = f"entering the working directory {spec.working_dir}"
            os.makedirs(spec.working_dir, exist_ok=True)
            os.chdir(spec.working_dir)
            if console is not None:
                stage = "allocating the container's terminal"
                attach_container_pty(console)
        except OSError as exc:
            raise RuntimeError(f"{stage}: {exc}") from exc
        if not spec.argv:
            code, message = (
                START_FAILURE_EXIT_CODE,
                (
                    "no command specified: the image has no entrypoint or cmd and the container "
                    "sets no command"
                ),
            )
        else:
            try:
                exec_command(spec.argv, dict(spec.env))
            except OSError as exc:
                code, message = exec_failure(spec.argv[0], exc)
    except RuntimeError as exc:
        code, message = START_FAILURE_EXIT_CODE, str(exc)
    except BaseException as exc:  # the child must always _exit, never unwind into the shim
        code, message = START_FAILURE_EXIT_CODE, f"{type(exc).__name__}: {exc}"
    with contextlib.suppress(OSError):
        os.write(error_w, f"{code} {message}".encode())
    os._exit(code)


# -- the shim ----------------------------------------------------------------------------


class Shim:
    def __init__(self, spec: LaunchSpec, container_dir: Path) -> None:
        self.spec = spec
        self.dir = container_dir
        self.child = 0
        self.status: int | None = None
        self.mount_ns_fd: int | None = None
        self.mount_ns: tuple[int, int] | None = None  # (dev, inode) of the container's
        self.log_fd = os.open(spec.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        self.log_size = os.fstat(self.log_fd).st_size
        self.attach: AttachServer | None = None
        self.execs: ExecServer | None = None

    def forward(self, signum: int, _frame: object) -> None:
        if self.child and self.status is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.child, signum)

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.child:
                self.status = status
            elif self.execs is not None:
                self.execs.reaped(pid, status)

    def kill_leftovers(self) -> None:
        """SIGKILL whatever the container left running inside its mount namespace (its own
        children, exec'd commands, daemons that called setsid): what a PID namespace or a
        cgroup kill does for other runtimes.

        Identity is the namespace's (dev, inode), which the shim keeps alive with an open fd
        (`mount_ns_fd`): a freed namespace's inode number is handed to the next new namespace
        at once, so without the fd a container started a moment later could be taken for
        ours. The session id is not used either: the container's pid, which is its session
        id, may already belong to another process once the container has been reaped."""
        if self.mount_ns is None:
            return
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                ns = os.stat(f"/proc/{entry}/ns/mnt")
            except OSError:
                continue
            if (ns.st_dev, ns.st_ino) == self.mount_ns:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(entry), signal.SIGKILL)

    def run(self) -> int:
        spec = self.spec
        readiness = os.fdopen(os.dup(1), "w")
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 1)
        os.dup2(devnull, 0)
        sc.prctl(sc.PR_SET_CHILD_SUBREAPER, 1)
        keep_open: list[int] = []
        console: socket.socket | None = None
        child_console: socket.socket | None = None
        stdio: tuple[int, int, int] | None = None
        outputs: dict[int, LineSplitter] = {}
        child_side: list[int] = []
        if spec.tty:
            console, child_console = socket.socketpair()
        else:
            out_r, out_w = os.pipe()
            err_r, err_w = os.pipe()
            if spec.stdin:
                in_r, in_w = os.pipe()
                keep_open.append(in_w)  # the container's stdin: attachers write it
            else:
                in_r = devnull
            stdio = (in_r, out_w, err_w)
            outputs = {out_r: LineSplitter("stdout"), err_r: LineSplitter("stderr")}
            child_side = [out_w, err_w] + ([in_r] if spec.stdin else [])
        error_r, error_w = os.pipe2(os.O_CLOEXEC)
        signal.signal(signal.SIGTERM, self.forward)
        signal.signal(signal.SIGINT, self.forward)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        shim_pid = os.getpid()
        pid = os.fork()
        if pid == 0:
            os.close(error_r)
            container_child(spec, stdio, child_console, shim_pid, error_w)
        self.child = pid
        # recorded by the shim itself, before anything can fail or the agent go away, so
        # `podnet down` always finds both processes
        pids_dir = Path(spec.pids_dir)
        for label, recorded_pid in (("shim", shim_pid), ("ctr", pid)):
            with contextlib.suppress(ProcessLookupError):
                record(pids_dir, f"{label}-{spec.id}", recorded_pid)
        os.close(error_w)
        for fd in child_side:
            os.close(fd)
        stdin_fd: int | None = None
        tty_fd: int | None = None
        if console is not None and child_console is not None:
            child_console.close()
            master = receive_pty(console)
            console.close()
            if master is not None:
                outputs[master] = LineSplitter("stdout")
                tty_fd = master
                stdin_fd = os.dup(master) if spec.stdin else None
        elif spec.stdin:
            stdin_fd = keep_open.pop()  # the write end of the container's stdin
        failure = b""
        while chunk := os.read(error_r, 4096):
            failure += chunk
        os.close(error_r)
        if failure:
            _code, _, message = failure.decode(errors="replace").partition(" ")
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
            self.write_exit(START_FAILURE_EXIT_CODE, "StartError", message)
            answer = {
                "ok": False,
                "reason": "StartError",
                "exit_code": START_FAILURE_EXIT_CODE,
                "message": message,
            }
            readiness.write(json.dumps(answer) + "\n")
            readiness.close()
            return 0
        started = {
            "shim_pid": shim_pid,
            "pid": pid,
            "started_at": now_iso(),
            "pid_start_time": process_start_time(pid),
        }
        with contextlib.suppress(OSError):  # exec succeeded, so the namespaces are in place
            # held open until the shim exits: keeps the namespace, and so its inode, ours
            self.mount_ns_fd = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
            ns = os.fstat(self.mount_ns_fd)
            self.mount_ns = (ns.st_dev, ns.st_ino)
        # the sockets first: once started.json says "running", exec and attach must answer
        self.attach = self.serve_attach(stdin_fd, tty_fd)
        self.execs = self.serve_exec()
        atomic_write(self.dir / STARTED_FILE, json.dumps(started) + "\n")
        readiness.write(json.dumps({"ok": True, **started}) + "\n")
        readiness.close()
        sel = selectors.DefaultSelector()
        self.pump(sel, outputs)
        for fd in keep_open:
            os.close(fd)
        assert self.status is not None
        code = os.waitstatus_to_exitcode(self.status)
        exit_code = code if code >= 0 else 128 - code
        if self.execs is not None:  # killed with the container (kill_leftovers)
            self.execs.close()
        self.write_exit(exit_code, "Completed" if exit_code == 0 else "Error", None)
        if self.attach is not None:  # after exit.json: attachers report the exit code
            self.attach.close()
        sel.close()  # after the servers' close, which unregisters from it
        return 0

    def serve_exec(self) -> ExecServer | None:
        """The container's exec socket; without it, exec into this container fails."""
        try:
            return ExecServer(str(self.dir / EXEC_SOCKET), self.spawn_exec)
        except OSError as exc:
            print(f"exec socket unavailable: {exc}", file=sys.stderr, flush=True)
            return None

    def spawn_exec(self, request: ExecRequest) -> ExecProcess:
        """Fork a child of this shim that enters the container and execs the command (the
        `launcher exec` path, without a new interpreter): stdio are pipes to the shim, or a
        pty allocated inside the container whose master comes back over a socketpair."""
        devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        error_r, error_w = os.pipe2(os.O_CLOEXEC)
        ours: dict[int, int] = {}  # the shim's read ends: fd -> STDOUT/STDERR
        theirs: list[int] = []  # the child's ends, closed here after the fork
        stdio = [devnull, devnull, devnull]
        stdin_w: int | None = None
        console: socket.socket | None = None
        child_console: socket.socket | None = None
        if request.tty:
            console, child_console = socket.socketpair()
        else:
            if request.stdin:
                stdio[0], stdin_w = os.pipe2(os.O_CLOEXEC)
                theirs.append(stdio[0])
            for target, wanted, kind in ((1, request.stdout, STDOUT), (2, request.stderr, STDERR)):
                if wanted:
                    read_end, stdio[target] = os.pipe2(os.O_CLOEXEC)
                    ours[read_end] = kind
                    theirs.append(stdio[target])
        pid = os.fork()
        if pid == 0:
            code = 126
            try:
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                    signal.signal(sig, signal.SIG_DFL)
                os.setsid()  # its own group: a kill reaches everything it started
                if child_console is None:
                    for target, fd in enumerate(stdio):
                        os.dup2(fd, target)  # dup2 makes the copy inheritable
                code = exec_in_container(
                    self.dir,
                    list(request.argv),
                    child_console.fileno() if child_console is not None else None,
                    error_w,
                )
            finally:
                os._exit(code)  # never return into the shim's loop
        os.close(error_w)
        for fd in (*theirs, devnull):
            os.close(fd)
        tty_fd: int | None = None
        if console is not None and child_console is not None:
            child_console.close()
            console.settimeout(10.0)
            try:
                tty_fd = receive_pty(console)
            except OSError:
                tty_fd = None
            console.close()
            if tty_fd is not None:
                ours[tty_fd] = STDOUT
                stdin_w = os.dup(tty_fd) if request.stdin else None
        return ExecProcess(pid, stdin_w, ours, tty_fd, error_r)

    def serve_attach(self, stdin_fd: int | None, tty_fd: int | None) -> AttachServer | None:
        """The container's attach socket; a container runs without one if it cannot be made."""
        try:
            return AttachServer(
                str(self.dir / ATTACH_SOCKET), stdin_fd, tty_fd, self.spec.stdin_once
            )
        except OSError as exc:
            print(f"attach socket unavailable: {exc}", file=sys.stderr, flush=True)
            if stdin_fd is not None:
                os.close(stdin_fd)
            return None

    def pump(self, sel: selectors.BaseSelector, outputs: dict[int, LineSplitter]) -> None:
        """Copy output into the log (and to attachers) until the container has exited and its
        output ended; serve the attach and exec sockets meanwhile (`sel`: the caller closes it
        after the servers)."""
        kinds = {fd: STDERR if s.stream == "stderr" else STDOUT for fd, s in outputs.items()}
        for fd in outputs:
            os.set_blocking(fd, False)
            sel.register(fd, selectors.EVENT_READ)
        attach = self.attach
        if attach is not None:
            attach.register(sel)
        execs = self.execs
        if execs is not None:
            execs.register(sel)
        pidfd = os.pidfd_open(self.child)
        sel.register(pidfd, selectors.EVENT_READ)
        deadline: float | None = None
        paused = False
        while True:
            now = time.monotonic()
            timeout = 5.0 if deadline is None else max(0.0, deadline - now)
            if execs is not None:
                timeout = min(timeout, execs.timeout(now) or timeout)
            for key, events in sel.select(timeout):
                fd = key.fd
                if attach is not None and key.data is attach:
                    attach.handle(key, events)
                    continue
                if execs is not None and key.data is execs:
                    execs.handle(key, events)
                    continue
                if fd == pidfd:
                    sel.unregister(pidfd)
                    os.close(pidfd)
                    continue
                try:
                    chunk = os.read(fd, 65536)
                except BlockingIOError:
                    continue
                except OSError:  # EIO: every holder of the pty's other side is gone
                    chunk = b""
                splitter = outputs[fd]
                if chunk:
                    self.write_log(splitter.feed(chunk, time.time_ns()))
                    if attach is not None:
                        attach.broadcast(kinds[fd], chunk)
                else:
                    self.write_log(splitter.flush(time.time_ns()))
                    sel.unregister(fd)
                    os.close(fd)
                    del outputs[fd]
            if attach is not None and attach.backlogged != paused:
                # an attacher is behind: stop reading output until it catches up
                paused = attach.backlogged
                for fd in outputs:
                    if paused:
                        sel.unregister(fd)
                    else:
                        sel.register(fd, selectors.EVENT_READ)
            self.reap()
            if execs is not None:
                execs.check(time.monotonic())
            if self.status is not None and deadline is None:
                self.kill_leftovers()
                deadline = time.monotonic() + DRAIN_SECONDS
            if deadline is not None and (not outputs or time.monotonic() >= deadline):
                break
        for fd, splitter in outputs.items():
            self.write_log(splitter.flush(time.time_ns()))
            with contextlib.suppress(KeyError):  # unregistered while an attacher lagged
                sel.unregister(fd)
            os.close(fd)

    def write_log(self, data: bytes) -> None:
        """Append whole records; rotate at the size limit (only between records)."""
        while data:
            written = os.write(self.log_fd, data)
            data = data[written:]
            self.log_size += written
        if self.log_size >= self.spec.log_max_bytes:
            os.replace(self.spec.log_path, rotated_path(self.spec.log_path))
            os.close(self.log_fd)
            self.log_fd = os.open(self.spec.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
            self.log_size = 0

    def write_exit(self, exit_code: int, reason: str, message: str | None) -> None:
        payload = {
            "exit_code": exit_code,
            "finished_at": now_iso(),
            "reason": reason,
            "message": message,
        }
        atomic_write(self.dir / EXIT_FILE, json.dumps(payload) + "\n")


def run_shim(spec_path: Path) -> int:
    spec = LaunchSpec.from_json(spec_path.read_text())
    if os.fork() > 0:
        os._exit(0)  # the runtime reaps this at once; the shim below belongs to init now
    os.setsid()
    with contextlib.suppress(OSError):
        sc.set_process_name("podnet-shim")
    try:
        return Shim(spec, spec_path.parent).run()
    except Exception as exc:
        print(f"shim for container {spec.id} failed: {exc!r}", file=sys.stderr)
        with contextlib.suppress(OSError):
            os.write(
                1,
                (
                    json.dumps(
                        {
                            "ok": False,
                            "reason": "StartError",
                            "exit_code": START_FAILURE_EXIT_CODE,
                            "message": f"container shim failed: {exc}",
                        }
                    )
                    + "\n"
                ).encode(),
            )
        raise


# -- the zygote: a warm launcher that forks shims ----------------------------------------


def serve_zygote(sock_fd: int) -> int:
    """`launcher zygote FD`: start shims by forking this already-initialised interpreter.

    Starting a Python interpreter per container costs tens of milliseconds of CPU; forking a
    warm one costs about a millisecond. The runtime talks over FD (a SOCK_SEQPACKET socket):
    each message is a spec path with the readiness pipe's write end attached (SCM_RIGHTS);
    the forked child does exactly what `launcher run` does with that pipe as its stdout.
    The zygote daemonizes first (so it is nobody's child), tells the runtime its pid, and
    exits when the runtime's end of the socket closes (the agent went away).
    """
    if os.fork() > 0:
        os._exit(0)
    os.setsid()
    with contextlib.suppress(OSError):
        sc.set_process_name("podnet-zygote")
    sock = socket.socket(fileno=sock_fd)
    sock.send(str(os.getpid()).encode())
    while True:
        try:
            message, fds, _flags, _addr = socket.recv_fds(sock, 4096, 1)
        except OSError:
            return 0
        if not message:
            for fd in fds:
                os.close(fd)
            return 0  # the runtime closed its end
        if not fds:
            continue
        ready_w = fds[0]
        spec_path = Path(message.decode())
        pid = os.fork()
        if pid == 0:
            code = START_FAILURE_EXIT_CODE
            try:
                sock.close()
                os.dup2(ready_w, 1)
                os.close(ready_w)
                log_fd = os.open(
                    spec_path.parent / "shim.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640
                )
                os.dup2(log_fd, 2)
                os.close(log_fd)
                code = run_shim(spec_path)
            finally:
                os._exit(code)  # never return into the zygote's loop
        os.close(ready_w)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)  # run_shim's first fork exits at once


# -- exec into a running container ------------------------------------------------------


def exec_in_container(
    container_dir: Path, argv: list[str], console_fd: int | None, error_fd: int | None
) -> int:
    def fail(code: int, message: str) -> int:
        if error_fd is not None:
            with contextlib.suppress(OSError):
                os.write(error_fd, f"{code} {message}".encode())
        print(message, file=sys.stderr)
        return code

    if error_fd is not None:
        os.set_inheritable(error_fd, False)  # the command must not hold the runtime's pipe
    try:
        spec = LaunchSpec.load(container_dir)
        started = json.loads((container_dir / STARTED_FILE).read_text())
    except (OSError, ValueError) as exc:
        return fail(126, f"container in {container_dir} has not started: {exc}")
    pid = int(started["pid"])
    if (container_dir / EXIT_FILE).exists() or process_start_time(pid) != started.get(
        "pid_start_time"
    ):
        return fail(126, f'container "{spec.name}" is not running')
    fds = [
        os.open(f"/proc/{pid}/ns/{ns}", os.O_RDONLY | os.O_CLOEXEC) for ns in ("net", "uts", "mnt")
    ]
    if process_start_time(pid) != started.get("pid_start_time"):
        return fail(126, f'container "{spec.name}" is not running')
    for fd, (flag, what) in zip(
        fds,
        ((sc.CLONE_NEWNET, "net"), (sc.CLONE_NEWUTS, "uts"), (sc.CLONE_NEWNS, "mnt")),
        strict=True,
    ):
        sc.setns(fd, flag, f"/proc/{pid}/ns/{what}")
        os.close(fd)
    try:
        os.chdir(spec.working_dir)
    except OSError:
        os.chdir("/")
    env = dict(spec.env)
    if console_fd is not None:
        env.setdefault("TERM", "xterm")
        try:
            attach_container_pty(socket.socket(fileno=console_fd))
        except OSError as exc:
            return fail(126, f"allocating a terminal in the container: {exc}")
    if not argv:
        return fail(126, "exec: no command given")
    try:
        exec_command(argv, env)
    except OSError as exc:
        return fail(*exec_failure(argv[0], exc))
    return 0  # unreachable: exec replaced the process


def main(argv: list[str]) -> int:
    usage = (
        "usage: python -m podnet.agent.kubelet.launcher run SPEC_FILE\n"
        "       python -m podnet.agent.kubelet.launcher zygote SOCKET_FD\n"
        "       python -m podnet.agent.kubelet.launcher exec CONTAINER_DIR [--console-fd N]"
        " [--error-fd N] -- ARGV..."
    )
    if len(argv) == 2 and argv[0] == "run":
        return run_shim(Path(argv[1]))
    if len(argv) == 2 and argv[0] == "zygote":
        return serve_zygote(int(argv[1]))
    if len(argv) >= 2 and argv[0] == "exec":
        container_dir = Path(argv[1])
        rest = argv[2:]
        console_fd, error_fd = None, None
        while rest and rest[0] != "--":
            if rest[0] == "--console-fd" and len(rest) > 1:
                console_fd, rest = int(rest[1]), rest[2:]
            elif rest[0] == "--error-fd" and len(rest) > 1:
                error_fd, rest = int(rest[1]), rest[2:]
            else:
                print(usage, file=sys.stderr)
                return 2
        return exec_in_container(container_dir, rest[1:], console_fd, error_fd)
    print(usage, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
