"""Fixtures for the runtime's root tests: a throwaway pod netns, a runtime, a kubelet server
(over TLS from the suite's `podnet_server`, which also reviews its callers).

Everything carries the `pnt4-` netns / `pt4` link prefix and is removed in `finally` blocks,
also when a test fails: containers are killed through the runtime and, as a backstop, by
their recorded pids; namespaces are deleted by name (names we generated).
"""

from __future__ import annotations

import asyncio
import secrets
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio

from podnet import procs
from podnet.agent.kubelet.authn import KubeletAuth, server_tls
from podnet.agent.kubelet.cri import ContainerConfig, ContainerState, Sandbox
from podnet.agent.kubelet.logformat import join_lines, parse_records
from podnet.agent.kubelet.runtime import Runtime
from podnet.agent.kubelet.server import KubeletServer
from podnet.apiserver.streams.dial import kubelet_client_tls
from podnet.images.store import ImageStore
from podnet.testing.server import ServerProcess

NODE = "pnt4-node"


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@dataclass
class PodNet:
    """A pod network namespace; `peer` is a second namespace joined to it by a veth pair."""

    netns: str
    path: str
    pod_ip: str | None = None
    peer: str | None = None
    peer_ip: str | None = None


@pytest.fixture
def pod_netns() -> Iterator[PodNet]:
    name = f"pnt4-{secrets.token_hex(4)}"
    ip("netns", "add", name)
    try:
        ip("-n", name, "link", "set", "lo", "up")
        yield PodNet(name, f"/run/netns/{name}")
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


@pytest.fixture
def pod_with_peer() -> Iterator[PodNet]:
    """Pod netns with eth0 = 10.251.N.2/30, and a peer netns at 10.251.N.1 to reach it from."""
    tag = secrets.token_hex(3)
    pod, peer = f"pnt4-{tag}-pod", f"pnt4-{tag}-peer"
    octet = int(tag[:2], 16)
    pod_ip, peer_ip = f"10.251.{octet}.2", f"10.251.{octet}.1"
    created: list[str] = []
    try:
        for ns in (pod, peer):
            ip("netns", "add", ns)
            created.append(ns)
            ip("-n", ns, "link", "set", "lo", "up")
        ip(
            "link",
            "add",
            f"pt4{tag}a",
            "netns",
            pod,
            "type",
            "veth",
            "peer",
            "name",
            f"pt4{tag}b",
            "netns",
            peer,
        )
        ip("-n", pod, "link", "set", f"pt4{tag}a", "name", "eth0")
        ip("-n", pod, "addr", "add", f"{pod_ip}/30", "dev", "eth0")
        ip("-n", pod, "link", "set", "eth0", "up")
        ip("-n", peer, "addr", "add", f"{peer_ip}/30", "dev", f"pt4{tag}b")
        ip("-n", peer, "link", "set", f"pt4{tag}b", "up")
        yield PodNet(pod, f"/run/netns/{pod}", pod_ip, peer, peer_ip)
    finally:
        for ns in created:
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


@pytest.fixture(scope="session")
def image_store(tmp_path_factory: pytest.TempPathFactory) -> ImageStore:
    return ImageStore(tmp_path_factory.mktemp("pnt4-images"))


def cleanup_runtime(runtime: Runtime) -> None:
    runtime.close()
    for state in runtime.list():
        runtime.cleanup_pod(state.pod_uid)
    procs.stop_all(runtime.pids_dir, grace_seconds=1.0)


@pytest.fixture
def runtime(tmp_path: Path, image_store: ImageStore) -> Iterator[Runtime]:
    rt = Runtime(tmp_path / "state", image_store)
    try:
        yield rt
    finally:
        cleanup_runtime(rt)


def make_sandbox(net: PodNet, name: str = "web-0", uid: str | None = None) -> Sandbox:
    return Sandbox(
        pod_uid=uid or f"uid-{secrets.token_hex(6)}",
        namespace="default",
        name=name,
        netns=net.path,
        hostname=name,
        hosts=f"# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n10.9.9.9\t{name}\n",
        resolv_conf="search default.svc.cluster.local svc.cluster.local cluster.local\n"
        "nameserver 10.96.0.10\noptions ndots:5\n",
    )


@dataclass
class Harness:
    """A runtime plus one pod sandbox in a throwaway netns, with the helpers tests share."""

    runtime: Runtime
    net: PodNet
    sandbox: Sandbox

    @staticmethod
    def busybox(
        name: str,
        script: str,
        *,
        env: tuple[tuple[str, str], ...] = (),
        working_dir: str | None = None,
        tty: bool = False,
        stdin: bool = False,
    ) -> ContainerConfig:
        return ContainerConfig(
            name=name,
            image="busybox",
            command=("sh", "-c", script),
            args=(),
            env=env,
            working_dir=working_dir,
            tty=tty,
            stdin=stdin,
        )

    def other_pod(self, name: str) -> Sandbox:
        return make_sandbox(self.net, name=name)

    async def start(
        self, cfg: ContainerConfig, attempt: int = 0, sandbox: Sandbox | None = None
    ) -> ContainerState:
        return await self.runtime.start(sandbox or self.sandbox, cfg, attempt)

    async def wait_exited(self, container_id: str, seconds: float = 10.0) -> ContainerState:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while True:
            state = self.runtime.inspect(container_id)
            if not state.running and state.exit_code is not None:
                return state
            if loop.time() > deadline:
                raise AssertionError(f"container {state.name} still running after {seconds}s")
            await asyncio.sleep(0.02)

    async def wait_log(self, container_id: str, text: str, seconds: float = 10.0) -> str:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while text not in (out := self.log(container_id)):
            if loop.time() > deadline:
                raise AssertionError(f"{text!r} not in the log after {seconds}s: {out!r}")
            await asyncio.sleep(0.05)
        return out

    def log(self, container_id: str) -> str:
        records, _ = parse_records(self.runtime.log_path(container_id).read_bytes())
        return b"".join(line.content for line in join_lines(records)).decode()


@pytest.fixture
def harness(runtime: Runtime, pod_netns: PodNet) -> Harness:
    return Harness(runtime, pod_netns, make_sandbox(pod_netns))


@pytest.fixture
def peer_harness(runtime: Runtime, pod_with_peer: PodNet) -> Harness:
    return Harness(runtime, pod_with_peer, make_sandbox(pod_with_peer, name="agn-pod"))


@pytest.fixture
def runtime_factory(tmp_path: Path, image_store: ImageStore) -> Iterator[Callable[[], Runtime]]:
    """New Runtime objects on one state dir (an agent restart); all cleaned up at the end."""
    made: list[Runtime] = []

    def make() -> Runtime:
        rt = Runtime(tmp_path / "shared-state", image_store)
        made.append(rt)
        return rt

    try:
        yield make
    finally:
        if made:
            cleanup_runtime(made[-1])


@dataclass
class Kubelet:
    server: KubeletServer
    url: str
    api_server: ServerProcess  # the cluster: its CA, and the reviews the endpoint asks for
    containers: dict[tuple[str, str, str], str] = field(default_factory=dict)
    sandboxes: dict[tuple[str, str], str] = field(default_factory=dict)  # pod → netns path

    def client_tls(self) -> ssl.SSLContext:
        """The API server's TLS towards kubelets: the cluster CA and its client certificate."""
        state = self.api_server.state_dir
        return kubelet_client_tls(
            state / "ca.crt",
            state / "apiserver-kubelet-client.crt",
            state / "apiserver-kubelet-client.key",
        )

    def session(self, identity: bool = True) -> aiohttp.ClientSession:
        """A client that trusts the cluster CA and (with `identity`) presents the API
        server's kubelet client certificate, as the API server does."""
        if identity:
            tls = self.client_tls()
        else:
            tls = ssl.create_default_context(cafile=str(self.api_server.state_dir / "ca.crt"))
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls))


@pytest_asyncio.fixture
async def kubelet(runtime: Runtime, podnet_server: ServerProcess) -> AsyncIterator[Kubelet]:
    """The kubelet endpoint over the real runtime, as node `pnt4-node` of `podnet_server`
    (TLS from its CA; callers reviewed by it)."""
    containers: dict[tuple[str, str, str], str] = {}
    sandboxes: dict[tuple[str, str], str] = {}
    issued = podnet_server.node_credentials(NODE, ["127.0.0.1"])
    api = podnet_server.api()
    server = KubeletServer(
        runtime,
        lambda ns, pod, c: containers.get((ns, pod, c)),
        KubeletAuth(api, NODE),
        netns=lambda ns, pod: sandboxes.get((ns, pod)),
    )
    tls = server_tls(issued.cert_path, issued.key_path, podnet_server.ca_path.read_bytes())
    await server.start("127.0.0.1", 0, tls)
    try:
        url = f"https://127.0.0.1:{server.port}"
        yield Kubelet(server, url, podnet_server, containers, sandboxes)
    finally:
        await server.stop()
        await api.close()
