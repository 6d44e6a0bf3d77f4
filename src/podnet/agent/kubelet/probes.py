"""Container probes: readiness, liveness and startup, with exec, tcpSocket and httpGet handlers.

What belongs here: `ProbeSpec` (a probe from the pod spec, with upstream defaults), the pure
threshold logic (`ProbeCounter`), the handlers, and `Prober`, which keeps one asyncio task per
(container id, probe kind) and reports result changes through a callback so the pod loop can
react (contract 3: the prober only records and wakes).

Invariants:
- Results per container *run*: a restarted container gets fresh workers (new container id).
- Readiness starts at failure unless seeded (an adopted container keeps the readiness it had, so an
  agent restart does not drop endpoints); liveness and startup start at success/unknown.
- While a startup probe has not succeeded, readiness and liveness do not run (upstream).
- Network probes connect to the pod IP from a socket created inside the pod's network namespace
  (`podnet.kernel.netns.call_in`), so they reach exactly what the pod serves on its address.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from podnet import dial

log = logging.getLogger("podnet.kubelet.probes")

READINESS = "readiness"
LIVENESS = "liveness"
STARTUP = "startup"
KINDS = (STARTUP, READINESS, LIVENESS)


@dataclass(frozen=True, slots=True)
class ProbeSpec:
    handler: str  # exec | tcpSocket | httpGet
    command: tuple[str, ...] = ()
    port: int | str = 0
    host: str | None = None
    path: str = "/"
    scheme: str = "HTTP"
    headers: tuple[tuple[str, str], ...] = ()
    initial_delay: float = 0.0
    period: float = 10.0
    timeout: float = 1.0
    success_threshold: int = 1
    failure_threshold: int = 3

    @classmethod
    def from_spec(cls, probe: Mapping[str, Any] | None) -> ProbeSpec | None:
        """Parse a pod-spec probe; None when absent. Raises ValueError naming the field."""
        if not probe:
            return None
        timing = {
            "initial_delay": float(probe.get("initialDelaySeconds", 0)),
            "period": float(probe.get("periodSeconds", 10)),
            "timeout": float(probe.get("timeoutSeconds", 1)),
            "success_threshold": int(probe.get("successThreshold", 1)),
            "failure_threshold": int(probe.get("failureThreshold", 3)),
        }
        if "exec" in probe:
            command = tuple(str(a) for a in (probe["exec"] or {}).get("command") or ())
            if not command:
                raise ValueError("probe exec.command is empty")
            return cls("exec", command=command, **timing)  # type: ignore[arg-type]
        if "tcpSocket" in probe:
            tcp = probe["tcpSocket"] or {}
            return cls("tcpSocket", port=tcp.get("port", 0), host=tcp.get("host"), **timing)  # type: ignore[arg-type]
        if "httpGet" in probe:
            http = probe["httpGet"] or {}
            headers = tuple(
                (str(h.get("name", "")), str(h.get("value", "")))
                for h in http.get("httpHeaders") or ()
            )
            return cls(
                "httpGet",
                port=http.get("port", 0),
                host=http.get("host"),
                path=str(http.get("path") or "/"),
                scheme=str(http.get("scheme") or "HTTP").upper(),
                headers=headers,
                **timing,  # type: ignore[arg-type]
            )
        raise ValueError("probe has none of exec, tcpSocket, httpGet (grpc is not supported)")


def resolve_port(port: int | str, container_ports: Sequence[Mapping[str, Any]]) -> int:
    """A numeric port, or a named one looked up in the container's `ports`."""
    if isinstance(port, int):
        return port
    if port.isdigit():
        return int(port)
    for p in container_ports:
        if p.get("name") == port:
            return int(p["containerPort"])
    raise ValueError(f"probe port {port!r} is not a number nor a named port of the container")


@dataclass(slots=True)
class ProbeCounter:
    """Success/failure thresholds (pure): feed results, read the settled outcome."""

    success_threshold: int
    failure_threshold: int
    outcome: bool | None = None  # None until a threshold is reached
    successes: int = 0
    failures: int = 0

    def observe(self, ok: bool) -> bool:
        """Record one result; True when the settled outcome changed."""
        if ok:
            self.successes += 1
            self.failures = 0
            settled = self.successes >= self.success_threshold
        else:
            self.failures += 1
            self.successes = 0
            settled = self.failures >= self.failure_threshold
        if settled and self.outcome is not ok:
            self.outcome = ok
            return True
        return False


def render_http_request(
    path: str, host: str, port: int, headers: Sequence[tuple[str, str]]
) -> bytes:
    names = {name.lower() for name, _ in headers}
    lines = [f"GET {path} HTTP/1.1"]
    if "host" not in names:
        lines.append(f"Host: {host}:{port}")
    if "user-agent" not in names:
        lines.append("User-Agent: kube-probe/1.32")
    if "accept" not in names:
        lines.append("Accept: */*")
    lines.extend(f"{name}: {value}" for name, value in headers)
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def parse_status_code(status_line: bytes) -> int:
    parts = status_line.split()
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        raise ValueError(f"not an HTTP status line: {status_line[:80]!r}")
    return int(parts[1])


@dataclass(frozen=True, slots=True)
class ProbeTarget:
    """Where a container's probes go."""

    container_id: str
    netns: str  # path of the pod's network namespace
    pod_ip: str
    container_ports: tuple[Mapping[str, Any], ...] = ()


ExecFn = Callable[[str, Sequence[str], float], Awaitable[tuple[int, bytes]]]


def _socket_in(netns_path: str) -> socket.socket:
    from podnet.kernel import netns

    sock = netns.call_in(netns_path, lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
    sock.setblocking(False)
    return sock


async def _connect(target: ProbeTarget, host: str, port: int) -> socket.socket:
    sock = await asyncio.to_thread(_socket_in, target.netns)
    try:
        await dial.connect(sock, (host, port))
    except BaseException:
        sock.close()
        raise
    return sock


async def run_probe(spec: ProbeSpec, target: ProbeTarget, exec_fn: ExecFn) -> tuple[bool, str]:
    """Run a probe once within its timeout: (success, failure message)."""
    try:
        async with asyncio.timeout(spec.timeout):
            return await _run_handler(spec, target, exec_fn)
    except TimeoutError:
        return False, f"probe timed out after {spec.timeout:g}s"
    except (OSError, ValueError) as exc:
        return False, str(exc)


async def _run_handler(spec: ProbeSpec, target: ProbeTarget, exec_fn: ExecFn) -> tuple[bool, str]:
    if spec.handler == "exec":
        code, output = await exec_fn(target.container_id, spec.command, spec.timeout)
        text = output.decode(errors="replace").strip()
        return code == 0, f"exec {list(spec.command)} exited {code}: {text}"[:300]
    port = resolve_port(spec.port, target.container_ports)
    host = spec.host or target.pod_ip
    sock = await _connect(target, host, port)
    if spec.handler == "tcpSocket":
        sock.close()
        return True, ""
    tls = None
    if spec.scheme == "HTTPS":
        tls = ssl.create_default_context()
        tls.check_hostname = False
        tls.verify_mode = ssl.CERT_NONE  # upstream kubelet skips verification too
    reader, writer = await asyncio.open_connection(sock=sock, ssl=tls)
    try:
        writer.write(render_http_request(spec.path, host, port, spec.headers))
        await writer.drain()
        code = parse_status_code(await reader.readline())
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    if 200 <= code < 400:
        return True, ""
    return False, f"HTTP probe failed with statuscode: {code}"


@dataclass(slots=True)
class _Worker:
    kind: str
    spec: ProbeSpec
    counter: ProbeCounter
    task: asyncio.Task[None] | None = None
    message: str = ""


@dataclass(slots=True)
class _ContainerProbes:
    target: ProbeTarget
    workers: dict[str, _Worker] = field(default_factory=dict)
    started: asyncio.Event = field(default_factory=asyncio.Event)
    on_failure: Callable[[str, str], None] | None = None  # (kind, message) of each failed probe


class Prober:
    """Runs the probes of running containers; `on_change(container_id)` on every settled change."""

    def __init__(self, exec_fn: ExecFn, on_change: Callable[[str], None]) -> None:
        self._exec = exec_fn
        self._on_change = on_change
        self._containers: dict[str, _ContainerProbes] = {}

    def ensure(
        self,
        target: ProbeTarget,
        specs: Mapping[str, ProbeSpec | None],
        seed_ready: bool = False,
        on_failure: Callable[[str, str], None] | None = None,
    ) -> None:
        """Start workers for a running container (no-op when already probing it);
        `on_failure(kind, message)` hears of every failed probe (upstream's Unhealthy events)."""
        if target.container_id in self._containers:
            return
        probes = _ContainerProbes(target, on_failure=on_failure)
        self._containers[target.container_id] = probes
        if specs.get(STARTUP) is None:
            probes.started.set()
        for kind in KINDS:
            spec = specs.get(kind)
            if spec is None:
                continue
            counter = ProbeCounter(spec.success_threshold, spec.failure_threshold)
            if kind == READINESS and seed_ready:
                counter.outcome = True
            worker = _Worker(kind, spec, counter)
            worker.task = asyncio.create_task(
                self._run(probes, worker), name=f"probe-{kind}-{target.container_id}"
            )
            probes.workers[kind] = worker

    def forget(self, container_id: str) -> None:
        probes = self._containers.pop(container_id, None)
        if probes is None:
            return
        for worker in probes.workers.values():
            if worker.task is not None:
                worker.task.cancel()

    def ready(self, container_id: str) -> bool:
        """Readiness: True without a readiness probe once started, else the probe's outcome."""
        probes = self._containers.get(container_id)
        if probes is None:
            return False
        if not probes.started.is_set():
            return False
        worker = probes.workers.get(READINESS)
        return True if worker is None else worker.counter.outcome is True

    def started(self, container_id: str) -> bool:
        probes = self._containers.get(container_id)
        return probes is not None and probes.started.is_set()

    def liveness_failure(self, container_id: str) -> str | None:
        """The failure message when liveness (or startup) settled on failure."""
        probes = self._containers.get(container_id)
        if probes is None:
            return None
        for kind in (LIVENESS, STARTUP):
            worker = probes.workers.get(kind)
            if worker is not None and worker.counter.outcome is False:
                name = "Liveness" if kind == LIVENESS else "Startup"
                return f"{name} probe failed: {worker.message}"
        return None

    async def _run(self, probes: _ContainerProbes, worker: _Worker) -> None:
        cid = probes.target.container_id
        if worker.kind != STARTUP:
            await probes.started.wait()
        await asyncio.sleep(worker.spec.initial_delay)
        while True:
            try:
                ok, message = await run_probe(worker.spec, probes.target, self._exec)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a probe must never kill the prober: count it as failed
                ok, message = False, f"probe error: {exc}"
            if not ok:
                worker.message = message
                if probes.on_failure is not None:
                    probes.on_failure(worker.kind, message)
            if worker.counter.observe(ok):
                log.info(
                    "%s probe of %s: %s %s",
                    worker.kind,
                    cid[:12],
                    "ok" if ok else "failed",
                    message,
                )
                if worker.kind == STARTUP and ok:
                    probes.started.set()
                self._on_change(cid)
                if worker.kind == STARTUP and ok:
                    return  # startup probes stop once they succeed
                if worker.kind in (LIVENESS, STARTUP) and not ok:
                    return  # the container is going to be killed: a new run gets new workers
            await asyncio.sleep(worker.spec.period)

    async def close(self) -> None:
        tasks = [w.task for p in self._containers.values() for w in p.workers.values() if w.task]
        self._containers.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
