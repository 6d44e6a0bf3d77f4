"""Components come back by themselves (#19 item 3) in a real lab: the lab's supervisor restarts a
killed agent (its node is Ready again) and a killed API server, and counts the restarts; a
`kill -9` of an agent neither kills a `kubectl exec`'d process (it belongs to the container's
shim) nor, in userspace mode, cuts a stream through a ClusterIP or refuses new connections
(the proxy sockets live in the node's relay process).

Marks: root + slow. One two-node lab for the module (userspace proxy mode, the mode whose data
path lives in the agent's process tree), always taken down.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest

from podnet import procs
from podnet.lab import Lab, LabSpec
from podnet.lab.lab import _list_nodes, _node_ready
from podnet.testing import waiting
from podnet.testing.traffic import ServiceLoad, StreamProbe, request_once

T = TypeVar("T")

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    # no cluster DNS: nothing here resolves names
    spec = LabSpec(name=f"t19r{secrets.token_hex(2)}", nodes=2, proxy_mode="userspace", dns=False)
    lab = Lab.up(spec, merge_kubeconfig=False, timeout=120)
    try:
        yield lab
    finally:
        lab.down()


def poll(what: str, get: Callable[[], T | None], seconds: float = 60.0) -> T:
    """Every wait here outlasts a restart: an error from the API counts as not yet."""
    return waiting.poll(what, get, seconds, tolerate=(Exception,))


def recorded(lab: Lab, label: str) -> procs.Recorded:
    found = [r for r in procs.recorded(lab.state_dir / "pids") if r.label == label]
    assert found and procs.is_alive(found[0]), f"{label} is not running"
    return found[0]


def test_a_killed_agent_comes_back_and_its_node_is_ready(lab: Lab) -> None:
    agent = recorded(lab, "agent-node1")
    before = lab.status().nodes[0].agent_restarts
    os.kill(agent.pid, signal.SIGKILL)

    def restarted() -> procs.Recorded | None:
        node1 = lab.status().nodes[0]
        new = recorded(lab, "agent-node1") if node1.agent_alive else None
        return new if new is not None and new.pid != agent.pid else None

    new = poll("the supervisor to restart the agent", restarted)
    assert lab.status().nodes[0].agent_restarts == before + 1
    started = time.time()  # heartbeats have one-second resolution: one after this is new

    def ready_again() -> bool | None:
        nodes = asyncio.run(_list_nodes(lab.kubeconfig))
        return _node_ready(nodes["node1"], since=started + 1) or None

    poll("node1 to post Ready from the new agent", ready_again)
    assert recorded(lab, "agent-node1") == new
    assert lab.status().healthy


def test_a_killed_server_comes_back(lab: Lab) -> None:
    server = recorded(lab, "server")
    before = lab.status().server_restarts
    os.kill(server.pid, signal.SIGKILL)
    nodes = poll("the API to answer again", lambda: asyncio.run(_list_nodes(lab.kubeconfig)))
    assert set(nodes) == {"node1", "node2"}
    status = lab.status()
    assert status.server_alive and status.server_restarts == before + 1
    assert recorded(lab, "server").pid != server.pid
    unit = lab.supervisor.status()["units"]["server"]
    assert unit["last_exit"] == "killed by SIGKILL"


def kubectl(lab: Lab, *args: str, stdin: str | None = None, check: bool = True) -> str:
    out = subprocess.run(
        ["kubectl", "--kubeconfig", str(lab.kubeconfig), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert not check or out.returncode == 0, f"kubectl {' '.join(args)}: {out.stdout}{out.stderr}"
    return out.stdout


def restart_agent(lab: Lab, node: str) -> None:
    """kill -9 the node's agent; return once a new one runs and the node posted Ready."""
    index = [n.name for n in lab.status().nodes].index(node)
    agent = recorded(lab, f"agent-{node}")
    os.kill(agent.pid, signal.SIGKILL)

    def restarted() -> procs.Recorded | None:
        if not lab.status().nodes[index].agent_alive:
            return None
        new = recorded(lab, f"agent-{node}")
        return new if new.pid != agent.pid else None

    poll(f"the supervisor to restart the agent of {node}", restarted)
    started = time.time()

    def ready_again() -> bool | None:
        nodes = asyncio.run(_list_nodes(lab.kubeconfig))
        return _node_ready(nodes[node], since=started + 1) or None

    poll(f"{node} to post Ready from its new agent", ready_again)


SLEEPER = """
apiVersion: v1
kind: Pod
metadata: {name: sleeper}
spec:
  nodeName: node1
  containers:
  - {name: main, image: busybox, command: ["sleep", "3600"]}
"""


def test_an_exec_process_outlives_an_agent_restart(lab: Lab) -> None:
    kubectl(lab, "apply", "-f", "-", stdin=SLEEPER)
    kubectl(lab, "wait", "--for=condition=Ready", "pod/sleeper", "--timeout=60s")
    script = "touch /tmp/started; sleep 4; touch /tmp/done"
    session = subprocess.Popen(
        ["kubectl", "--kubeconfig", str(lab.kubeconfig), "exec", "sleeper", "--",
         "sh", "-c", script],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        poll(
            "the exec'd process to start",
            lambda: kubectl(lab, "exec", "sleeper", "--", "test", "-e", "/tmp/started") == ""
            or None,
        )
        restart_agent(lab, "node1")
        session.wait(30)  # its stream ended with the agent
        poll(
            "the exec'd process to finish its work",
            lambda: kubectl(lab, "exec", "sleeper", "--", "test", "-e", "/tmp/done") == "" or None,
            seconds=30,
        )
    finally:
        if session.poll() is None:
            session.kill()
            session.wait()
        kubectl(lab, "delete", "pod", "sleeper", "--wait=false")


WEB = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: netexec
        image: registry.k8s.io/e2e-test-images/agnhost:2.52
        args: ["netexec", "--http-port=8080"]
        readinessProbe:
          httpGet: {path: /readyz, port: 8080}
          periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
"""


def test_userspace_streams_and_new_connections_survive_an_agent_restart(lab: Lab) -> None:
    kubectl(lab, "apply", "-f", "-", stdin=WEB)
    kubectl(lab, "rollout", "status", "deploy/web", "--timeout=90s")
    ip = kubectl(lab, "get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}").strip()
    node_ns = lab["node1"].netns
    poll(
        "the Service to answer from node1",
        lambda: not request_once_in(node_ns, ip).startswith("error:") or None,
    )
    probe = StreamProbe(node_ns, ip, 80).start()
    load = ServiceLoad(node_ns, ip, 80, rate=100).start()
    try:
        time.sleep(1.0)
        restart_agent(lab, "node1")
        time.sleep(1.0)
    finally:
        stats = load.stop()
        probe.stop()
    print(
        f"userspace, agent kill -9: {stats.ok} ok, {stats.failed} failed {dict(stats.errors)}, "
        f"longest gap {stats.longest_gap * 1000:.0f} ms, stream exchanges {probe.exchanges}"
    )
    assert stats.failed == 0, stats.errors
    assert probe.broken is None and probe.exchanges > 50, probe.broken
    kubectl(lab, "delete", "-f", "-", stdin=WEB)


def request_once_in(netns_name: str, ip: str) -> str:
    from podnet.kernel import netns

    return netns.call_in(netns_name, lambda: request_once(ip, 80, "/hostname", 2.0))
