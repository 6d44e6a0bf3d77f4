"""A "machine" joins a lab with one token and runs pods next to a lab node (#15 item 5).

The machine is a network namespace on the lab's underlay, prepared like a bare host (an
address on eth0, nothing of podnet): the lab plans and plumbs it (`with_new_node` +
`build_node`, so `podnet down` removes it whatever happens) but starts no agent there. In it,
`podnet join https://SERVER --token T` — the token from `podnet token create` and the
server's address are all it is given — pins the CA, gets its node credential and becomes the
agent. A pod on it and a pod on a lab node reach each other over the overlay; `kubectl exec`
and `kubectl logs` reach the machine's pod (API server -> the machine's kubelet endpoint over
TLS, with the serving certificate the join obtained and the API server's kubelet client
certificate); `podnet leave` then removes everything the agent made in the machine. The
machine then joins again in userspace proxy mode with its run_dir apart from its state dir
(as /run/podnet is from /var/lib/podnet/node): the relay process the agent starts there is
made to outlive the agent, and `leave` stops it by its record before removing the run_dir.

Marks: root + slow; one 1-node lab for the module.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from podnet import procs
from podnet.kernel import netns
from podnet.kernel.links import Netlink
from podnet.lab.lab import machine_lock
from podnet.lab.spec import NodePlan, load_plan, with_new_node
from podnet.lab.topology import build_node

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.timeout(300)]

STATE_ROOT = Path("/var/lib/podnet")


def podnet(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "podnet.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


@dataclass
class Joined:
    lab: str
    kubeconfig: Path
    machine: NodePlan
    state: Path
    agent: procs.Recorded
    server: str
    token: str
    scratch: Path  # for a second join


def kubectl(kubeconfig: Path, *args: str, stdin: str | None = None) -> str:
    out = subprocess.run(
        ["kubectl", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env={**os.environ, "KUBECONFIG": str(kubeconfig)},
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, f"kubectl {' '.join(args)}: {out.stdout}{out.stderr}"
    return out.stdout


def wait_for(check: object, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out after {seconds}s waiting for {what}"
        time.sleep(0.5)


@pytest.fixture(scope="module")
def joined(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Joined]:
    name = f"tj{secrets.token_hex(2)}"
    up = podnet("up", "--name", name, "--nodes", "1", "--no-dns")
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        state_dir = STATE_ROOT / name
        with machine_lock():
            plan = load_plan(state_dir)
            assert plan is not None
            plan, machine = with_new_node(plan)
            plan.save()  # `podnet down` now removes the machine's namespace and link
            build_node(plan, machine)
        kubeconfig = state_dir / "kubeconfig"
        token = podnet("token", "create", "--kubeconfig", str(kubeconfig),
                       "--server", plan.server_url)  # fmt: skip
        assert token.returncode == 0, token.stderr
        state = tmp_path_factory.mktemp("machine")
        log = (state / "join.log").open("wb")
        # what a person types on the machine: the server's address and the token
        process = subprocess.Popen(
            ["ip", "netns", "exec", machine.netns, sys.executable, "-m", "podnet.cli.main",
             "join", plan.server_url, "--token", token.stdout.strip(),
             "--node-name", machine.name, "--state-dir", str(state / "node"),
             "--run-dir", str(state / "run"), "--netns-prefix", machine.pod_netns_prefix],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        agent = procs.record(state / "pids", "join", process.pid)
        try:
            yield Joined(
                name, kubeconfig, machine, state / "node", agent,
                plan.server_url, token.stdout.strip(), state,
            )  # fmt: skip
        finally:
            procs.stop(agent)
            process.wait(10)
            # what the agent started (its launcher zygote, pods' shims and containers) keeps
            # running without it, as on a real node; `podnet leave` stops it, but a test that
            # failed before its leave has not run it: stop it by the agent's records
            procs.stop_all(state / "node", grace_seconds=2.0)
            log.close()
    finally:
        down = podnet("down", "--name", name)
        assert down.returncode == 0, down.stdout + down.stderr


def leave(joined: Joined, state: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", joined.machine.netns, sys.executable, "-m", "podnet.cli.main",
         "leave", "--state-dir", str(state)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def node_ready(kubeconfig: Path, node: str) -> bool:
    out = subprocess.run(
        ["kubectl", "get", "node", node, "-o", "json"],
        capture_output=True,
        text=True,
        env={**os.environ, "KUBECONFIG": str(kubeconfig)},
        check=False,
    )
    if out.returncode != 0:
        return False
    conditions = json.loads(out.stdout)["status"].get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def web_pod(name: str, node: str, fetch_from: str | None = None) -> str:
    """busybox httpd serving its name, or (`fetch_from`) the page it fetched from there first:
    then it turns Ready only once it reached that address."""
    fill = f"echo {name} > /w/index.html"
    if fetch_from:
        fill = f"until wget -q -T 2 -O /w/index.html http://{fetch_from}:8080/; do sleep 1; done"
    serve = f"echo {name} serving && httpd -f -p 8080 -h /w"
    return json.dumps({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"nodeName": node, "containers": [{
            "name": "web", "image": "busybox",
            "command": ["sh", "-c", f"mkdir -p /w && {fill} && {serve}"],
            "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1},
        }]},
    })  # fmt: skip


def pod_ip_when_ready(kubeconfig: Path, name: str) -> str:
    found: dict[str, str] = {}

    def ready() -> bool:
        pod = json.loads(kubectl(kubeconfig, "get", "pod", name, "-o", "json"))
        conditions = {c["type"]: c["status"] for c in pod["status"].get("conditions") or []}
        found["ip"] = pod["status"].get("podIP", "")
        return conditions.get("Ready") == "True"

    wait_for(ready, 90, f"pod {name} Ready")
    return found["ip"]


def test_a_joined_machine_runs_pods_next_to_lab_nodes(joined: Joined) -> None:
    machine = joined.machine.name
    wait_for(lambda: node_ready(joined.kubeconfig, machine), 90, f"node {machine} Ready")
    whoami = json.loads((joined.state / "join.json").read_text())
    assert whoami["node_name"] == machine and whoami["node_ip"] == joined.machine.ip
    kubectl(joined.kubeconfig, "apply", "-f", "-", stdin=web_pod("on-node1", "node1"))
    node1_ip = pod_ip_when_ready(joined.kubeconfig, "on-node1")
    # the machine's pod is Ready only once it fetched on-node1's page over the overlay ...
    on_machine = web_pod("on-machine", machine, fetch_from=node1_ip)
    kubectl(joined.kubeconfig, "apply", "-f", "-", stdin=on_machine)
    machine_ip = pod_ip_when_ready(joined.kubeconfig, "on-machine")
    # ... and serves it back to on-node1: both directions between the machine and a lab node
    got = kubectl(joined.kubeconfig, "exec", "on-node1", "--", "wget", "-qO-", "-T", "5",
                  f"http://{machine_ip}:8080/")  # fmt: skip
    assert got.strip() == "on-node1"
    # the API server reaches the machine's kubelet endpoint: exec and logs in its pod
    page = kubectl(joined.kubeconfig, "exec", "on-machine", "--", "cat", "/w/index.html")
    assert page.strip() == "on-node1"
    assert "on-machine serving" in kubectl(joined.kubeconfig, "logs", "on-machine")

    # leave: the agent stops, and what it made in the machine is gone, its pods' containers too
    started = [r for r in procs.recorded(joined.state / "agent" / "pids") if procs.is_alive(r)]
    assert any(r.label.startswith("ctr-") for r in started), started
    left = leave(joined, joined.state)
    assert left.returncode == 0, left.stdout + left.stderr
    assert not procs.is_alive(joined.agent)
    assert not [r for r in started if procs.is_alive(r)]
    assert not netns.list_names(joined.machine.pod_netns_prefix)
    with Netlink(joined.machine.netns) as netlink:
        assert {link.name for link in netlink.links()} & {"cni0", "flannel.1"} == set()
    assert not joined.state.exists()


def test_leave_stops_the_relay_recorded_under_a_separate_run_dir(joined: Joined) -> None:
    if joined.state.exists():  # the test above failed before its leave: its agent still runs
        assert leave(joined, joined.state).returncode == 0
    machine = joined.machine.name
    base = joined.scratch / "again"
    state, run = base / "node", base / "run"  # apart, as /var/lib/podnet/node and /run/podnet
    base.mkdir()
    log = (base / "join.log").open("wb")
    process = subprocess.Popen(
        ["ip", "netns", "exec", joined.machine.netns, sys.executable, "-m", "podnet.cli.main",
         "join", joined.server, "--token", joined.token, "--node-name", machine,
         "--state-dir", str(state), "--run-dir", str(run),
         "--netns-prefix", joined.machine.pod_netns_prefix, "--proxy-mode", "userspace"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    agent = procs.record(base / "pids", "join", process.pid)
    relays: list[procs.Recorded] = []
    try:
        # the proxier starts the relay at its first sync (the kubernetes Service is there)
        def relay_up() -> bool:
            assert procs.is_alive(agent), (base / "join.log").read_text()[-3000:]
            relays[:] = [r for r in procs.recorded(run / "proxy-relay") if procs.is_alive(r)]
            return bool(relays)

        wait_for(relay_up, 90, f"the relay recorded under {run}/proxy-relay")
        (relay,) = relays
        assert relay.label == "relay" and relay.pid != process.pid

        left = leave(joined, state)
        assert left.returncode == 0, left.stdout + left.stderr
        assert not procs.is_alive(agent)
        assert not procs.is_alive(relay), f"the relay (pid {relay.pid}) outlived leave"
        assert "relay" in left.stdout, left.stdout  # leave says what it stopped
        assert not run.exists() and not state.exists()
    finally:
        procs.stop(agent)
        process.wait(10)
        for rec in relays:  # by the record read while it ran: leave removed the file
            procs.stop(rec, grace_seconds=2.0)
        procs.stop_all(state, grace_seconds=2.0)
        procs.stop_all(run, grace_seconds=2.0)
        log.close()
