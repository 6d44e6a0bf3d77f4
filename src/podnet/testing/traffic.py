"""Traffic that watches a Service while something breaks: what the resilience tests and
`benchmarks/reliability.py` count failures with.

What belongs here: `ServiceLoad` (HTTP requests at a fixed rate to one address, each on a new
connection, from inside a network namespace: failures by kind, the longest time without a
success) and `StreamProbe` (one keep-alive HTTP connection asked again and again: does the
established connection survive?). Both run on threads that entered the namespace, so the
caller's event loop and namespace are untouched. Traffic goes only to the address given (a
ClusterIP inside the lab).

Invariants: a request counts as failed when it is refused, reset, times out or gets no HTTP
200; the rate is held by schedule (a slow request does not push the next ones later), and
every scheduled request is counted exactly once.
"""

from __future__ import annotations

import collections
import contextlib
import http.client
import socket
import threading
import time
from dataclasses import dataclass, field

from podnet.kernel import netns

_GET = "GET {path} HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n"


@dataclass
class LoadStats:
    ok: int = 0
    failed: int = 0
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    longest_gap: float = 0.0  # the longest time between two successful requests (seconds)
    answers: collections.Counter[str] = field(default_factory=collections.Counter)
    failed_at: list[float] = field(default_factory=list)  # time.monotonic() of each failure

    @property
    def total(self) -> int:
        return self.ok + self.failed


def request_once(ip: str, port: int, path: str, timeout: float) -> str:
    """One HTTP GET on a new connection: the body on a 200, else `error:<kind>`."""
    try:
        with socket.create_connection((ip, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(_GET.format(path=path).encode())
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
    except ConnectionRefusedError:
        return "error:refused"
    except ConnectionResetError:
        return "error:reset"
    except TimeoutError:
        return "error:timeout"
    except OSError as exc:
        return f"error:{exc.strerror or exc.errno}"
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        return f"error:status {head[:12].decode(errors='replace')!r}"
    return body.decode(errors="replace").strip()


class ServiceLoad:
    """`rate` requests a second to `ip:port` from inside `netns_name`, until `stop()`."""

    def __init__(
        self,
        netns_name: str,
        ip: str,
        port: int,
        *,
        rate: float = 200.0,
        path: str = "/hostname",
        timeout: float = 2.0,
        workers: int = 8,
    ) -> None:
        self.netns = netns_name
        self.ip = ip
        self.port = port
        self.interval = 1.0 / rate
        self.path = path
        self.timeout = timeout
        self.workers = workers
        self.stats = LoadStats()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._next = 0.0
        self._last_ok = 0.0
        self._threads: list[threading.Thread] = []

    def _slot(self) -> float | None:
        with self._lock:
            if self._stop.is_set():
                return None
            slot = self._next
            self._next = max(self._next + self.interval, time.monotonic() - 1.0)
            return slot

    def _record(self, answer: str) -> None:
        now = time.monotonic()
        with self._lock:
            if answer.startswith("error:"):
                self.stats.failed += 1
                self.stats.errors[answer] += 1
                self.stats.failed_at.append(now)
                return
            self.stats.ok += 1
            self.stats.answers[answer] += 1
            self.stats.longest_gap = max(self.stats.longest_gap, now - self._last_ok)
            self._last_ok = now

    def _worker(self) -> None:
        netns.switch(self.netns)
        while (slot := self._slot()) is not None:
            delay = slot - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self._record(request_once(self.ip, self.port, self.path, self.timeout))

    def start(self) -> ServiceLoad:
        self._next = self._last_ok = time.monotonic()
        for i in range(self.workers):
            thread = threading.Thread(target=self._worker, name=f"load-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> LoadStats:
        self._stop.set()
        for thread in self._threads:
            thread.join(self.timeout + 5)
        return self.stats

    def __enter__(self) -> ServiceLoad:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class StreamProbe:
    """One keep-alive HTTP connection to `ip:port` (agnhost netexec's `/echo`), asked every
    `interval`: `broken` says whether (and why) the established connection failed."""

    def __init__(self, netns_name: str, ip: str, port: int, interval: float = 0.02) -> None:
        self.netns = netns_name
        self.ip = ip
        self.port = port
        self.interval = interval
        self.exchanges = 0
        self.broken: str | None = None
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stream-probe", daemon=True)

    def _run(self) -> None:
        netns.switch(self.netns)
        conn = http.client.HTTPConnection(self.ip, self.port, timeout=5)
        try:
            conn.connect()
            self._connected.set()
            sock = conn.sock
            while not self._stop.is_set():
                msg = f"m{self.exchanges}"
                conn.request("GET", f"/echo?msg={msg}")
                response = conn.getresponse()
                body = response.read().decode()
                if response.status != 200 or body != msg or conn.sock is not sock:
                    self.broken = f"answer {response.status} {body!r} (wanted {msg!r})"
                    return
                self.exchanges += 1
                self._stop.wait(self.interval)
        except (OSError, http.client.HTTPException) as exc:
            self.broken = f"{type(exc).__name__}: {exc}"
        finally:
            self._connected.set()
            with contextlib.suppress(OSError):
                conn.close()

    def start(self) -> StreamProbe:
        self._thread.start()
        self._connected.wait(10)
        return self

    def stop(self) -> StreamProbe:
        self._stop.set()
        self._thread.join(10)
        return self
