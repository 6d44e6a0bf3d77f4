"""A tiny hand-built node for proxy kernel tests, and the proxy component running on it.

Topology (all names carry the test's marker, by default `pnt3-<id>` / `pt3<id>`):

    client netns 10.244.2.10 ── veth ── node netns (10.244.2.1 / bridge 10.244.1.1) ── ep0..ep2
                                                                   (10.244.1.10-12, httpd on :8080
                                                                    answering their name)

The client sits on its own subnet so every reply is routed through the node (conntrack sees
both directions without br_netfilter). `ProxyNode` runs `ProxyComponent` on a thread that
switched into the node namespace, fed by an `InMemoryApi` on that thread's loop; the test's
`put`/`delete` reach it through the loop. Used by `tests/kernel/proxy` and `benchmarks/proxy.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import secrets
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvloop

from podnet.agent.context import AgentContext
from podnet.agent.policy.component import PolicyComponent
from podnet.agent.proxy.component import ProxyComponent
from podnet.kernel import netns, sysctl
from podnet.kernel.links import Netlink
from podnet.testing.api import InMemoryApi

Obj = dict[str, Any]
NODE_IP = "10.244.1.1"
CLIENT_IP = "10.244.2.10"
ENDPOINT_IPS = ("10.244.1.10", "10.244.1.11", "10.244.1.12")
HTTP_PORT = 8080


@dataclass
class Topology:
    marker: str
    node: str
    client: str
    endpoints: list[str]
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    dirs: list[tempfile.TemporaryDirectory[str]] = field(default_factory=list)

    def all_netns(self) -> list[str]:
        return [self.client, *self.endpoints, self.node]


def _pod(nl: Netlink, pod_ns: str, host_if: str, ip: str, gw: str) -> None:
    nl.create_veth(host_if, "eth0", peer_netns=pod_ns)
    nl.set_up(host_if)
    with Netlink(pod_ns) as pod:
        pod.ensure_address("eth0", f"{ip}/24")
        pod.set_up("eth0")
        pod.set_up("lo")
        pod.replace_route("0.0.0.0/0", gateway=gw)


@contextlib.contextmanager
def topology(prefix: str = "pnt3") -> Iterator[Topology]:
    """`prefix` (`pnt<digit>`) names the namespaces; links use `pt<digit>`."""
    tag = secrets.token_hex(2)
    marker = f"{prefix}-{tag}"
    link = f"pt{prefix[3:]}{tag}"
    topo = Topology(
        marker,
        f"{marker}-node",
        f"{marker}-cl",
        [f"{marker}-ep{i}" for i in range(len(ENDPOINT_IPS))],
    )
    try:
        for name in topo.all_netns():
            netns.create(name)
        with Netlink(topo.node) as nl:
            nl.set_up("lo")
            bridge = f"{link}b"
            nl.ensure_bridge(bridge)
            nl.ensure_address(bridge, f"{NODE_IP}/24")
            for i, ep_ns in enumerate(topo.endpoints):
                _pod(nl, ep_ns, f"{link}e{i}", ENDPOINT_IPS[i], NODE_IP)
                nl.set_master(f"{link}e{i}", bridge)
                # like the CNI bridge plugin's hairpinMode: with br_netfilter a DNAT back to
                # the sender is bridged out of the port it came in on
                nl.set_hairpin(f"{link}e{i}")
            _pod(nl, topo.client, f"{link}c", CLIENT_IP, "10.244.2.1")
            nl.ensure_address(f"{link}c", "10.244.2.1/24")
            # a default route so unknown destinations are routed (and can be REJECTed)
            nl.replace_route("0.0.0.0/0", gateway="10.244.1.254")
        sysctl.enable_ip_forward(topo.node)
        for i, ep_ns in enumerate(topo.endpoints):
            d = tempfile.TemporaryDirectory(prefix=f"{marker}-www")
            topo.dirs.append(d)
            Path(d.name, "index.html").write_text(f"ep{i}\n")
            argv = ["busybox", "httpd", "-f", "-p", str(HTTP_PORT), "-h", d.name]
            proc = netns.call_in(ep_ns, functools.partial(_spawn_quiet, argv))
            topo.procs.append(proc)
        for ip in ENDPOINT_IPS:
            wait_listening(topo.client, ip, HTTP_PORT)
        yield topo
    finally:
        errors: list[BaseException] = []
        _stop_groups(topo.procs)  # recorded processes only: each httpd's own process group
        for name in topo.all_netns():
            try:
                netns.delete(name)
            except Exception as exc:  # keep removing the others, report at the end
                errors.append(exc)
        for d in topo.dirs:
            d.cleanup()
        if errors:
            raise errors[0]


def _spawn_quiet(argv: list[str]) -> subprocess.Popen[bytes]:
    """In a process group of its own (its pid): busybox httpd forks a child per connection,
    which `_stop_groups` must end with it."""
    return subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )


def _stop_groups(recorded: list[subprocess.Popen[bytes]], grace_seconds: float = 5.0) -> None:
    """End recorded processes and, for those leading a process group of their own (the
    httpds), what they forked: the group's id is the recorded pid, which the kernel does not
    reuse while a member is alive. Others a test added (`Topology.procs`) are ended alone.

    Ending an httpd alone is not enough: a child serving a connection whose request never
    arrives (a revoked connection, the client's packets dropped by a policy) waits for it up
    to busybox's 60 s header timeout, in the endpoint's namespace, after the topology is gone."""
    groups: list[int] = []
    for proc in recorded:
        try:
            leads = os.getpgid(proc.pid) == proc.pid
        except ProcessLookupError:  # exited, not yet reaped: nothing left to signal
            continue
        if leads:
            groups.append(proc.pid)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        else:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_seconds
    for proc in recorded:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(grace_seconds)
    # the children, reparented once their httpd is gone, until they are reaped
    while alive := [pgid for pgid in groups if _group_alive(pgid)]:
        if time.monotonic() > deadline:
            for pgid in alive:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGKILL)
            return
        time.sleep(0.02)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_listening(ns: str, ip: str, port: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if http_get(ns, ip, port, timeout=0.5)[0].startswith("ep"):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{ip}:{port} did not answer from {ns}")
        time.sleep(0.05)


def _get(ip: str, port: int, timeout: float) -> str:
    try:
        with socket.create_connection((ip, port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(b"GET / HTTP/1.0\r\nHost: svc\r\n\r\n")
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
    except ConnectionRefusedError:
        return "refused"
    except ConnectionResetError:
        return "reset"
    except TimeoutError:
        return "timeout"
    except OSError as exc:
        return f"error:{exc.errno}"
    data = b"".join(chunks)
    if not data:
        return "empty"
    return data.split(b"\r\n\r\n", 1)[-1].decode().strip()


def http_get(ns: str, ip: str, port: int, n: int = 1, timeout: float = 2.0) -> list[str]:
    """`n` requests, each on a new connection, from inside namespace `ns`."""
    return netns.call_in(ns, lambda: [_get(ip, port, timeout) for _ in range(n)])


class ProxyNode:
    """`ProxyComponent` on its own thread and loop inside the node namespace; with
    `policy=True` the NetworkPolicy component runs beside it on the same API, wired as the
    agent wires them (the userspace proxy asks it before dialling)."""

    def __init__(
        self, topo: Topology, mode: str, *, policy: bool = False, **component_kw: Any
    ) -> None:
        self.topo = topo
        self.api = InMemoryApi()
        self.mode = mode
        self.kw = component_kw
        self.with_policy = policy
        self.state = tempfile.TemporaryDirectory(prefix=f"{topo.marker}-state")  # status files
        self.component: ProxyComponent | None = None
        self.policy: PolicyComponent | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self.error: BaseException | None = None

    def __enter__(self) -> ProxyNode:
        self._thread = threading.Thread(
            target=self._main, name=f"{self.topo.marker}-proxy", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(10):
            raise TimeoutError("proxy component did not start")
        if self.error is not None:
            raise self.error
        return self

    def _main(self) -> None:
        try:
            netns.switch(self.topo.node)
            uvloop.run(self._run())  # the agent's loop
        except BaseException as exc:  # surfaced to the test
            self.error = exc
            self._ready.set()

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        ctx = AgentContext(
            api=self.api,
            node_name="test-node",
            node_ip=NODE_IP,
            state_dir=Path(self.state.name),
            run_dir=Path("/nonexistent"),
            proxy_mode=self.mode,
            metrics_port=0,
        )
        kw = {"min_sync_period": 0.05, "sync_period": 0.5, **self.kw}
        if self.with_policy:
            self.policy = PolicyComponent(ctx, sync_period=0.5, counter_period=0.2)
            kw["dial_gate"] = self.policy.gate
        self.component = ProxyComponent(ctx, **kw)
        self._ready.set()
        runs = [self.component.run(self._stop)]
        if self.policy is not None:
            runs.append(self.policy.run(self._stop))
        await asyncio.gather(*runs)

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(15)
        self.state.cleanup()

    def cleanup_rules(self) -> None:
        """Remove this mode's rules (what switching modes does)."""
        assert self.component is not None
        comp = self.component

        async def clean() -> None:
            await comp.proxier.cleanup()

        # on the component's own loop and thread (already inside the node): its sockets and
        # transports belong to that uvloop, and closing them from another loop crashes it
        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(clean(), self._loop).result(30)

    def put(self, resource: str, obj: Obj) -> None:
        """Create or replace `obj` (from the test's thread)."""
        self._mark(resource)
        written = self._on_loop(self.api.put(resource, obj))
        self._written(resource, written)

    def delete(self, resource: str, obj: Obj) -> None:
        self._mark(resource)
        metadata = obj["metadata"]
        self._on_loop(self.api.remove(resource, metadata["name"], metadata.get("namespace")))
        if self.policy is not None and resource in self.policy.resources:
            revision = self._on_loop(self.api.store.current_revision())  # the delete's
            self._rv = max(self._rv, revision if isinstance(revision, int) else 0)

    def _written(self, resource: str, obj: object) -> None:
        if self.policy is None or resource not in self.policy.resources:
            return
        meta = obj.get("metadata") if isinstance(obj, dict) else None
        rv = str((meta or {}).get("resourceVersion") or "")
        self._rv = max(self._rv, int(rv) if rv.isdigit() else 0)

    def hold_lists(self) -> None:
        """The component's next lists wait until `release_lists`: what is `put` meanwhile
        reaches it as one complete list (a full sync from a full API, as after a restart)."""
        for resource in ("services", "endpointslices"):
            self.api.hold("list", resource)

    def release_lists(self) -> None:
        assert self._loop is not None, "the proxy node is not started"
        for resource in ("services", "endpointslices"):
            self._loop.call_soon_threadsafe(self.api.release, "list", resource)

    def _on_loop(self, call: Coroutine[Any, Any, object]) -> object:
        """Run an API call on the component's loop (the API belongs to that loop)."""
        assert self._loop is not None, "the proxy node is not started"
        return asyncio.run_coroutine_threadsafe(call, self._loop).result(30)

    def _mark(self, resource: str) -> None:
        if resource not in ("services", "endpointslices"):
            return  # only the NetworkPolicy component watches the others
        if self.component is not None and self._marked is None:
            self._marked = self.component.syncs_completed

    _marked: int | None = None
    _rv = 0  # the last write's resourceVersion: what the policy component must have applied

    def _policy_synced(self) -> bool:
        policy = self.policy
        return policy is None or (
            policy.applied_revision >= self._rv
            and not policy.runner.in_progress
            and not policy.runner.need_full
        )

    def wait_programmed(self, timeout: float = 20.0) -> None:
        """Until the proxy has synced every Service change since the last wait, and the policy
        component (when it runs) enforces every object written."""
        assert self.component is not None
        comp = self.component
        mark = self._marked if self._marked is not None else 0
        time.sleep(0.05)  # let the watch events reach the component's loop
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.error is not None:
                raise self.error
            proxy_synced = (
                comp.syncs_completed > mark
                and not comp.state.has_pending()
                and not comp.sync_in_progress
                and not comp.need_full
            )
            if proxy_synced and self._policy_synced():
                self._marked = None
                return
            time.sleep(0.02)
        policy = self.policy
        policy_state = (
            ""
            if policy is None
            else f"; policy enforces revision {policy.applied_revision} of {self._rv} "
            f"(last error: {policy.runner.last_error})"
        )
        raise TimeoutError(
            f"proxy ({self.mode}) did not sync within {timeout}s; "
            f"failures={comp.metrics.sync_failures_total.value}{policy_state}"
        )
