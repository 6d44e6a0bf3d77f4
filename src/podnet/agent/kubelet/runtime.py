"""The container runtime: containers as processes in the pod's namespaces, state on disk.

The kubelet (pods.py) creates a pod's network namespace and asks `Runtime` (the
`cri.ContainerRuntime` implementation) to run containers in it. Each container gets a
directory `<state_dir>/containers/<id>/` holding:

    spec.json      what to run (written here, before anything starts)
    started.json   shim pid, container pid and its start time (written by the shim)
    exit.json      exit code, finish time, reason (written by the shim, atomically, once)
    upper/ work/ merged/   the overlay's writable layer, its work dir, its mount point
    shim.log       the shim's own diagnostics

Other state: `<state_dir>/pids/` (shim and container pids, `podnet.procs` records, so
`podnet down` stops them), `<state_dir>/container-logs/<pod uid>/<container>/<attempt>.log`
(CRI-format logs, see `logformat.py`), `<state_dir>/pod-files/<pod uid>/` (the pod's
hosts, resolv.conf, hostname, bind-mounted into every container of the pod).

Invariants:
- Everything is read back from disk and /proc: a new `Runtime` on the same state dir (an
  agent restart) sees and manages the containers the previous one started; containers keep
  running meanwhile because their shim is not the agent's child (launcher.py).
- Shims are forked by a warm launcher process (`zygote.py`, one per Runtime, ended by
  `close()` or when the Runtime/agent goes away); if it is unusable, `launcher run` in a new
  interpreter does the same job, slower. Either way the shim is identical.
- A pid is only signalled after its start time matched the recorded one (pid reuse).
- `remove()` keeps that container's log, and deletes the logs of its earlier attempts: the
  log of attempt N serves `--previous` until attempt N+1 is removed.
- `ImageError` is the only error `start()` raises for a bad image; a command that cannot be
  executed yields a terminated state (reason StartError, exit code 128, runc's message),
  as with containerd.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from podnet import procs
from podnet.agent.kubelet.cri import (
    ContainerConfig,
    ContainerNotFound,
    ContainerNotRunning,
    ContainerState,
    Sandbox,
)
from podnet.agent.kubelet.launchspec import (
    EXIT_FILE,
    SPEC_FILE,
    STARTED_FILE,
    LaunchSpec,
    SpecBind,
    atomic_write,
    merge_env,
    resolve_argv,
)
from podnet.agent.kubelet.logformat import MAX_LOG_BYTES
from podnet.agent.kubelet.zygote import LauncherZygote
from podnet.images.store import ImageStore

LAUNCHER_MODULE = "podnet.agent.kubelet.launcher"
START_TIMEOUT = 30.0  # launcher answer; image building happens before and is not counted
LOST_EXIT_CODE = 255
_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def _component(value: str, what: str) -> str:
    if not _SAFE.match(value) or value in (".", ".."):
        raise ValueError(f"{what} {value!r} cannot be used as a file name")
    return value


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def process_running(pid: int, start_time: int | None) -> bool:
    """The process is the one started at `start_time` and has not exited (a zombie has:
    orphaned shims wait for init to reap them, which may take a while)."""
    return start_time is not None and procs.process_start_time(pid) == start_time


def _when(value: object) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else None


class Runtime:
    def __init__(self, state_dir: Path, images: ImageStore) -> None:
        self.state_dir = state_dir
        self.images = images
        self.containers_dir = state_dir / "containers"
        self.pids_dir = state_dir / "pids"
        self.logs_dir = state_dir / "container-logs"
        self.pod_files_dir = state_dir / "pod-files"
        self.tombstones_dir = self.containers_dir / ".removed"
        self.python = sys.executable
        self.log_max_bytes = MAX_LOG_BYTES
        self.nsenter = shutil.which("nsenter")
        self.zygote = LauncherZygote(
            [self.python, "-m", LAUNCHER_MODULE], self.pids_dir, self.containers_dir / "zygote.log"
        )

    def close(self) -> None:
        """Let go of the warm launcher (it exits). Containers are not affected; the runtime
        stays usable (a new launcher starts on the next start())."""
        self.zygote.close()

    # -- paths ---------------------------------------------------------------------------

    def container_dir(self, container_id: str) -> Path:
        return self.containers_dir / _component(container_id, "container id")

    def log_path(self, container_id: str) -> Path:
        """The container's log (CRI format); still answers after `remove()` while kept."""
        spec = self._spec(container_id)
        if spec is not None:
            return Path(spec.log_path)
        tombstone = _read_json(self.tombstones_dir / _component(container_id, "container id"))
        if tombstone is not None:
            return Path(str(tombstone["log_path"]))
        raise ContainerNotFound(container_id)

    def previous_log_path(self, container_id: str) -> Path | None:
        """The log of the latest earlier attempt of the same container of the same pod
        (what `kubectl logs --previous` shows), or None if there is none."""
        current = self.log_path(container_id)
        try:
            attempt = int(current.stem)
        except ValueError:
            return None
        earlier = [
            (int(p.stem), p)
            for p in current.parent.glob("*.log")
            if p.stem.isdigit() and int(p.stem) < attempt
        ]
        return max(earlier)[1] if earlier else None

    # -- lifecycle -----------------------------------------------------------------------

    async def start(
        self, sandbox: Sandbox, config: ContainerConfig, attempt: int
    ) -> ContainerState:
        image = await asyncio.to_thread(self.images.resolve, config.image)
        pod_uid = _component(sandbox.pod_uid, "pod uid")
        name = _component(config.name, "container name")
        container_id = secrets.token_hex(16)
        cdir = self.containers_dir / container_id
        for sub in ("upper", "work", "merged"):
            (cdir / sub).mkdir(parents=True)
        pod_files = self.pod_files_dir / pod_uid
        pod_files.mkdir(parents=True, exist_ok=True)
        atomic_write(pod_files / "hosts", sandbox.hosts)
        atomic_write(pod_files / "resolv.conf", sandbox.resolv_conf)
        atomic_write(pod_files / "hostname", sandbox.hostname + "\n")
        log_dir = self.logs_dir / pod_uid / name
        log_dir.mkdir(parents=True, exist_ok=True)
        env = merge_env(image.env, config.env, sandbox.hostname)
        spec = LaunchSpec(
            id=container_id,
            pod_uid=pod_uid,
            namespace=sandbox.namespace,
            pod_name=sandbox.name,
            name=name,
            attempt=attempt,
            image_ref=image.ref,
            image_id=image.id,
            netns=sandbox.netns,
            hostname=sandbox.hostname,
            rootfs=str(image.rootfs),
            upper_dir=str(cdir / "upper"),
            work_dir=str(cdir / "work"),
            merged_dir=str(cdir / "merged"),
            argv=resolve_argv(config.command, config.args, image.entrypoint, image.cmd, dict(env)),
            env=env,
            working_dir=config.working_dir or image.working_dir or "/",
            log_path=str(log_dir / f"{attempt}.log"),
            pids_dir=str(self.pids_dir),
            log_max_bytes=self.log_max_bytes,
            binds=(
                *(SpecBind(str(b.source), b.target, b.read_only) for b in image.binds),
                *(SpecBind(m.source, m.target, m.read_only) for m in config.mounts),
            ),
            etc_files=(
                ("/etc/hosts", str(pod_files / "hosts")),
                ("/etc/resolv.conf", str(pod_files / "resolv.conf")),
                ("/etc/hostname", str(pod_files / "hostname")),
            ),
            tty=config.tty,
            stdin=config.stdin,
            stdin_once=config.stdin_once,
        )
        atomic_write(cdir / SPEC_FILE, spec.to_json())
        answer = await self._launch(cdir)
        if not answer.get("ok") and not (cdir / EXIT_FILE).exists():
            self._write_exit(
                cdir,
                int(answer.get("exit_code", 128)),
                "StartError",
                str(answer.get("message", "the container did not start")),
            )
        return self.inspect(container_id)

    async def _launch(self, cdir: Path) -> dict[str, Any]:
        line = await self.zygote.launch(cdir / SPEC_FILE, START_TIMEOUT)
        if line is None or (
            not line and not (cdir / STARTED_FILE).exists() and not (cdir / EXIT_FILE).exists()
        ):
            line = await self._launch_process(cdir)  # the zygote was unusable: no shim ran
        if line:
            try:
                answer: dict[str, Any] = json.loads(line)
                return answer
            except ValueError:
                pass
        diagnostics = (cdir / "shim.log").read_text(errors="replace").strip()[-2000:]
        return {
            "ok": False,
            "exit_code": 128,
            "message": f"the container shim did not report back: {diagnostics or 'no output'}",
        }

    async def _launch_process(self, cdir: Path) -> bytes:
        """`launcher run` in a new interpreter: the shim's readiness line (b"" if none)."""
        shim_log = os.open(cdir / "shim.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        try:
            proc = await asyncio.create_subprocess_exec(
                self.python,
                "-m",
                LAUNCHER_MODULE,
                "run",
                str(cdir / SPEC_FILE),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=shim_log,
                start_new_session=True,
            )
        finally:
            os.close(shim_log)
        assert proc.stdout is not None
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT)
        except TimeoutError:
            line = b""
        # the shim closes its end right after answering: read to EOF, so the pipe's transport
        # is closed here and not left to the garbage collector (a ResourceWarning)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.stdout.read(), 2.0)
        await proc.wait()
        return line

    def _write_exit(self, cdir: Path, code: int, reason: str, message: str | None) -> None:
        payload = {
            "exit_code": code,
            "finished_at": datetime.now(UTC).isoformat(),
            "reason": reason,
            "message": message,
        }
        atomic_write(cdir / EXIT_FILE, json.dumps(payload) + "\n")

    def _spec(self, container_id: str) -> LaunchSpec | None:
        try:
            return LaunchSpec.load(self.container_dir(container_id))
        except (FileNotFoundError, NotADirectoryError):
            return None

    def inspect(self, container_id: str) -> ContainerState:
        cdir = self.container_dir(container_id)
        spec = self._spec(container_id)
        if spec is None:
            raise ContainerNotFound(container_id)
        started = _read_json(cdir / STARTED_FILE)
        exited = _read_json(cdir / EXIT_FILE)
        base: dict[str, Any] = {
            "id": container_id,
            "pod_uid": spec.pod_uid,
            "name": spec.name,
            "attempt": spec.attempt,
            "image": spec.image_ref,
            "image_id": spec.image_id,
            "started_at": _when(started.get("started_at")) if started else None,
        }
        if exited is not None:
            return ContainerState(
                **base,
                pid=None,
                running=False,
                exit_code=int(exited["exit_code"]),
                finished_at=_when(exited.get("finished_at")),
                reason=exited.get("reason"),
                message=exited.get("message"),
            )
        if started is None:
            shim_alive = any(
                process_running(r.pid, r.start_time)
                for r in procs.recorded(self.pids_dir)
                if r.label == f"shim-{container_id}"
            )
            return ContainerState(
                **base,
                pid=None,
                running=False,
                exit_code=None,
                finished_at=None,
                reason="ContainerCreating" if shim_alive else "Created",
                message=None,
            )
        pid = int(started["pid"])
        if self._alive(started, "pid", "pid_start_time") or self._shim_alive(started):
            return ContainerState(
                **base,
                pid=pid,
                running=True,
                exit_code=None,
                finished_at=None,
                reason=None,
                message=None,
            )
        return ContainerState(
            **base,
            pid=None,
            running=False,
            exit_code=LOST_EXIT_CODE,
            finished_at=None,
            reason="Unknown",
            message="the container and its shim are gone without recording an exit code",
        )

    @staticmethod
    def _alive(started: dict[str, Any], pid_key: str, start_key: str) -> bool:
        start = started.get(start_key)
        return start is not None and process_running(int(started[pid_key]), int(start))

    def _shim_alive(self, started: dict[str, Any]) -> bool:
        shim = int(started["shim_pid"])
        return any(
            r.pid == shim and process_running(r.pid, r.start_time)
            for r in procs.recorded(self.pids_dir)
        )

    def list(self, pod_uid: str | None = None) -> list[ContainerState]:
        out: list[ContainerState] = []
        if not self.containers_dir.is_dir():
            return out
        for cdir in self.containers_dir.iterdir():
            if cdir.name.startswith(".") or not (cdir / SPEC_FILE).is_file():
                continue
            try:
                state = self.inspect(cdir.name)
            except (ContainerNotFound, ValueError, KeyError):
                continue
            if pod_uid is None or state.pod_uid == pod_uid:
                out.append(state)
        return sorted(out, key=lambda s: (s.pod_uid, s.name, s.attempt, s.id))

    def _signal(self, container_id: str, sig: signal.Signals) -> bool:
        """Signal the container's main process if it is still the one we started."""
        started = _read_json(self.container_dir(container_id) / STARTED_FILE)
        if started is None or not self._alive(started, "pid", "pid_start_time"):
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(started["pid"]), sig)
        return True

    async def _wait_exit(self, cdir: Path, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while not (cdir / EXIT_FILE).exists():
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    async def stop(self, container_id: str, grace_seconds: float) -> ContainerState:
        """SIGTERM, up to `grace_seconds` for it to exit, then SIGKILL."""
        cdir = self.container_dir(container_id)
        state = self.inspect(container_id)
        if not state.running:
            return state
        self._signal(container_id, signal.SIGTERM)
        if not await self._wait_exit(cdir, max(0.0, grace_seconds)):
            self._signal(container_id, signal.SIGKILL)
            if not await self._wait_exit(cdir, 5.0):
                # the shim is gone too: nobody else will record the end
                self._write_exit(
                    cdir,
                    128 + signal.SIGKILL,
                    "Error",
                    "killed after the grace period; its shim was gone",
                )
        return self.inspect(container_id)

    def _kill_now(self, container_ids: Sequence[str]) -> None:
        """SIGKILL the containers (all first, then wait), let their shims record the exit,
        and forget their pid records. Blocking, bounded by a few seconds in total."""
        waiting = [self.container_dir(c) for c in container_ids if self._signal(c, signal.SIGKILL)]
        deadline = time.monotonic() + 3.0
        while any(not (d / EXIT_FILE).exists() for d in waiting) and time.monotonic() < deadline:
            time.sleep(0.01)
        labels = {f"{kind}-{c}" for c in container_ids for kind in ("shim", "ctr")}
        records = [r for r in procs.recorded(self.pids_dir) if r.label in labels]
        # shims end by themselves once their container is gone; SIGKILL the ones that do not
        deadline = time.monotonic() + 2.0
        while (
            any(process_running(r.pid, r.start_time) for r in records)
            and time.monotonic() < deadline
        ):
            time.sleep(0.01)
        for rec in records:
            if process_running(rec.pid, rec.start_time):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(rec.pid, signal.SIGKILL)
            procs.forget(rec)

    def remove(self, container_id: str) -> None:
        """Delete the container (killing it if it still runs); keep its log for --previous
        and drop the logs of its earlier attempts."""
        spec = self._spec(container_id)
        if spec is None:
            return
        self._kill_now([container_id])
        log = Path(spec.log_path)
        for older in log.parent.glob("*.log*"):  # N.log and its rotation N.log.1
            attempt = older.name.split(".", 1)[0]
            if attempt.isdigit() and int(attempt) < spec.attempt:
                older.unlink(missing_ok=True)
        self._drop_tombstones(
            lambda t: t.get("pod_uid") == spec.pod_uid
            and t.get("name") == spec.name
            and int(t.get("attempt", 0)) < spec.attempt
        )
        self.tombstones_dir.mkdir(parents=True, exist_ok=True)
        tombstone = {
            "pod_uid": spec.pod_uid,
            "name": spec.name,
            "attempt": spec.attempt,
            "log_path": spec.log_path,
        }
        atomic_write(self.tombstones_dir / container_id, json.dumps(tombstone) + "\n")
        shutil.rmtree(self.container_dir(container_id), ignore_errors=True)

    def _drop_tombstones(self, match: Any) -> None:
        if not self.tombstones_dir.is_dir():
            return
        for path in self.tombstones_dir.iterdir():
            data = _read_json(path)
            if data is None or match(data):
                path.unlink(missing_ok=True)

    def cleanup_pod(self, pod_uid: str) -> None:
        """Everything of a deleted pod: its containers (killed), logs and pod files."""
        states = self.list(pod_uid)
        self._kill_now([state.id for state in states])
        for state in states:
            shutil.rmtree(self.container_dir(state.id), ignore_errors=True)
        self._drop_tombstones(lambda t: t.get("pod_uid") == pod_uid)
        uid = _component(pod_uid, "pod uid")
        shutil.rmtree(self.logs_dir / uid, ignore_errors=True)
        shutil.rmtree(self.pod_files_dir / uid, ignore_errors=True)

    # -- exec ----------------------------------------------------------------------------

    def exec_command_line(
        self,
        container_id: str,
        command: Sequence[str],
        *,
        console_fd: int | None = None,
        error_fd: int | None = None,
    ) -> builtins.list[str]:
        """The argv that runs `command` inside the running container (see launcher exec).

        `console_fd`: a unix socket the launcher sends a pty master over (tty exec);
        `error_fd`: a pipe it writes "<exit code> <message>" to if the command cannot run.
        Both must be passed to the child (`pass_fds`)."""
        state = self.inspect(container_id)
        if not state.running:
            raise ContainerNotRunning(f'container "{state.name}" is not running')
        argv = [self.python, "-m", LAUNCHER_MODULE, "exec", str(self.container_dir(container_id))]
        if console_fd is not None:
            argv += ["--console-fd", str(console_fd)]
        if error_fd is not None:
            argv += ["--error-fd", str(error_fd)]
        return [*argv, "--", *command]

    def _nsenter_command_line(
        self, container_id: str, command: Sequence[str]
    ) -> tuple[builtins.list[str], dict[str, str] | None]:
        """nsenter into the running container's net, UTS and mount namespaces, or the
        launcher (env None: it applies the container's env itself) without nsenter."""
        state = self.inspect(container_id)
        spec = self._spec(container_id)
        if not state.running or state.pid is None or spec is None:
            raise ContainerNotRunning(f'container "{state.name}" is not running')
        if self.nsenter is None:
            return self.exec_command_line(container_id, command), None
        # --root/--wd without a value: the container process's root and working dir (a
        # value would be resolved on the machine, before entering the mount namespace)
        argv = [self.nsenter, f"--target={state.pid}", "--net", "--uts", "--mount"]
        argv += ["--root", "--wd", "--", *command]
        return argv, dict(spec.env)

    async def exec_sync(
        self,
        container_id: str,
        command: Sequence[str],
        timeout: float,  # noqa: ASYNC109
    ) -> tuple[int, bytes]:
        """Run `command` in the container; (exit code, stdout+stderr). Raises TimeoutError
        after `timeout` seconds (the command is killed) and ContainerNotRunning.

        Probes call this every period, so it uses util-linux `nsenter` (a few milliseconds)
        rather than the Python launcher (tens): the same namespaces, env and working dir;
        exit codes 126/127 when the command cannot run, nsenter's message in the output."""
        argv, env = self._nsenter_command_line(container_id, command)
        proc = await asyncio.create_subprocess_exec(
            *argv,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            output, _ = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            raise TimeoutError(
                f"command {list(command)} in container {container_id} timed out after {timeout:g}s"
            ) from None
        code = proc.returncode if proc.returncode is not None else -1
        return (code if code >= 0 else 128 - code), output
