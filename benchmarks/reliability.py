"""Reliability suite (not a test, #18): break a lab on purpose and count what is lost.

Run as root from the repo (each case is bounded in time; traffic stays inside the lab):
    .venv/bin/python benchmarks/reliability.py [--only R1,R2,...] [--rate 200]
        [--r6-cycles 50] [--r8-seconds 60] [--r4-cases 10000] [--modes iptables,nftables,userspace]

- R1 rolling update (`kubectl rollout restart`) of a 3-replica agnhost netexec Deployment (it
  exits at once on SIGTERM) under `--rate` requests/s through its ClusterIP, per kube-proxy
  mode, as upstream behaves and with the lab's endpoint drain (`podnet up --endpoint-drain`:
  SIGTERM waits until every proxy dropped the pod): failed requests.
- R2 `kill -9` of the client node's agent under the same load: new connections failed and
  whether a long keep-alive stream broke.
- R3 API server restart (SIGTERM + start) on SQLite: seconds until a new pod is Running and a
  scaled Deployment converged again; objects lost (every Service/ConfigMap/pod before is
  still there after).
- R4 `--r4-cases` fuzzed/hostile requests (`podnet.testing.fuzz`) against the lab's API:
  answers that are 5xx or not a Status, server restarts, pod sandboxes without a pod.
- R5 anonymous, wrong-token, expired-token and plaintext-HTTP requests: how many were let in.
- R6 `--r6-cycles` `podnet up`/`down` cycles, every second one with a fault during `up`
  (kill -9 of the server or an agent, or a stopped node): leftover namespaces, links, rules,
  processes, files.
- R7 `kill -9` of the server during a burst of 1,000 ConfigMap writes on SQLite: writes that
  were acknowledged but are missing after the restart, and `PRAGMA integrity_check`.
- R8 a node partitioned for `--r8-seconds` under load from the other node: seconds until
  traffic avoids it, failed requests after that, seconds until it is Ready after the heal.

Prints one table and writes benchmarks/results/reliability.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import sqlite3
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from podnet import procs
from podnet.api.client import load_kubeconfig
from podnet.kernel import netns
from podnet.lab import Lab, LabSpec, down_lab
from podnet.lab import faults as faultlib
from podnet.lab.lab import _list_nodes
from podnet.testing.traffic import ServiceLoad, StreamProbe, request_once

RESULTS = Path(__file__).parent / "results" / "reliability.json"
console = Console()

WEB = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 3
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 10
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


def kubectl(lab: Lab, *args: str, stdin: str | None = None, check: bool = True) -> str:
    out = subprocess.run(
        ["kubectl", "--kubeconfig", str(lab.kubeconfig), *args],
        input=stdin, capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    if check and out.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)}: {out.stdout}{out.stderr}")
    return out.stdout


def wait(what: str, check: Callable[[], bool], seconds: float = 120.0) -> float:
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > seconds:
            raise TimeoutError(f"{what}: not within {seconds:.0f} s")
        time.sleep(0.1)
    return time.monotonic() - started


def deploy_web(lab: Lab) -> str:
    kubectl(lab, "apply", "-f", "-", stdin=WEB)
    kubectl(lab, "rollout", "status", "deploy/web", "--timeout=120s")
    ip = kubectl(lab, "get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}").strip()
    ns = lab["node1"].netns
    wait(
        "the Service answering",
        lambda: not netns.call_in(ns, lambda: request_once(ip, 80, "/hostname", 1.0)).startswith(
            "error:"
        ),
    )
    return ip


def remove_web(lab: Lab) -> None:
    kubectl(lab, "delete", "deploy,svc", "web", "--wait=true", "--timeout=120s", check=False)


def api_answers(lab: Lab) -> bool:
    """The API server lists the nodes (False while it is still starting)."""
    from podnet.api.errors import ApiError

    try:
        return bool(asyncio.run(_list_nodes(lab.kubeconfig)))
    except (ApiError, OSError):
        return False


def node_ready(lab: Lab, node: str) -> str:
    nodes = asyncio.run(_list_nodes(lab.kubeconfig))
    return str(
        next(c["status"] for c in nodes[node]["status"]["conditions"] if c["type"] == "Ready")
    )


# --- the cases ---------------------------------------------------------------------------


def set_drain(lab: Lab, drain: bool, mode: str) -> None:
    """Restart the agents in `mode`, with or without endpoint drain (`--endpoint-drain`)."""
    if lab.plan.endpoint_drain != drain:
        lab.plan = replace(lab.plan, endpoint_drain=drain)
        lab.plan.save()
    lab.restart_agents(proxy_mode=mode)


def r1(lab: Lab, modes: list[str], rate: float) -> list[dict[str, Any]]:
    rows = []
    for mode in modes:
        for drain in (False, True):
            set_drain(lab, drain, mode)
            ip = deploy_web(lab)
            with ServiceLoad(lab["node1"].netns, ip, 80, rate=rate) as load:
                time.sleep(1)
                kubectl(lab, "rollout", "restart", "deploy/web")
                kubectl(lab, "rollout", "status", "deploy/web", "--timeout=180s")
                time.sleep(2)
            stats = load.stats
            rows.append(
                {
                    "mode": mode,
                    "endpoint_drain": drain,
                    "requests": stats.total,
                    "failed": stats.failed,
                    "errors": dict(stats.errors),
                }
            )
            console.log(f"R1 {rows[-1]}")
            remove_web(lab)
    set_drain(lab, False, "iptables")
    return rows


def r2(lab: Lab, modes: list[str], rate: float) -> list[dict[str, Any]]:
    rows = []
    for mode in modes:
        if mode != lab.plan.proxy_mode:
            lab.restart_agents(proxy_mode=mode)
        ip = deploy_web(lab)
        ns = lab["node1"].netns
        probe = StreamProbe(ns, ip, 80).start()
        with ServiceLoad(ns, ip, 80, rate=rate) as load:
            time.sleep(1)
            faultlib.inject(lab, faultlib.Request("kill", "agent node1"))
            wait("the agent back and node1 Ready", lambda: lab.status().nodes[0].agent_alive)
            time.sleep(3)
        probe.stop()
        rows.append(
            {
                "mode": mode,
                "requests": load.stats.total,
                "new_failed": load.stats.failed,
                "longest_gap_ms": round(load.stats.longest_gap * 1000),
                "stream_broken": 0 if probe.broken is None else 1,
                "stream_error": probe.broken,
            }
        )
        console.log(f"R2 {rows[-1]}")
        remove_web(lab)
    return rows


def r3(lab: Lab) -> dict[str, Any]:
    name = f"r3-{secrets.token_hex(2)}"
    kubectl(lab, "create", "namespace", name)
    for i in range(20):
        kubectl(lab, "-n", name, "create", "configmap", f"c{i}", f"--from-literal=k={i}")
    before = set(kubectl(lab, "get", "cm,svc,pods,deploy", "-A", "-o", "name").split())
    started = time.monotonic()
    lab.restart_server()
    answered = time.monotonic() - started
    kubectl(lab, "-n", name, "run", "after", "--image=busybox", "--", "sleep", "3600")
    running = wait(
        "a new pod Running",
        lambda: kubectl(lab, "-n", name, "get", "pod", "after", "-o", "jsonpath={.status.phase}")
        == "Running",
    )
    after = set(kubectl(lab, "get", "cm,svc,pods,deploy", "-A", "-o", "name").split())
    kubectl(lab, "delete", "namespace", name, "--wait=false")
    return {
        "store": "sqlite",
        "api_back_s": round(answered, 2),
        "new_pod_running_after_api_s": round(running, 2),
        "objects_lost": len(before - after),
    }


def r4(lab: Lab, cases: int) -> dict[str, Any]:
    from podnet.testing import fuzz

    server_url, ca, token, _ = load_kubeconfig(lab.kubeconfig)
    port = int(server_url.rsplit(":", 1)[1])
    context = ssl.create_default_context(cadata=ca.decode() if ca else None)
    context.check_hostname = False
    sandboxes_before = set(netns.list_names(lab.plan.netns_prefix))
    restarts_before = lab.status().server_restarts

    async def go() -> Any:
        for data in fuzz.setup_requests(token):
            await fuzz.send("127.0.0.1", port, data, context)
        return await fuzz.run("127.0.0.1", port, context, fuzz.generate(7, cases, token))

    report = asyncio.run(go())
    time.sleep(5)  # let the agents act on whatever was accepted
    pods = json.loads(kubectl(lab, "get", "pods", "-A", "-o", "json"))["items"]
    uids = {p["metadata"]["uid"] for p in pods}
    from podnet.agent.kubelet.sandbox import sandbox_netns_name

    expected = {
        sandbox_netns_name(lab[p["spec"]["nodeName"]].pod_netns_prefix, p["metadata"]["uid"])
        for p in pods
        if p["spec"].get("nodeName") in lab
    }
    orphans = {
        n
        for n in set(netns.list_names(lab.plan.netns_prefix)) - sandboxes_before
        if "-pod-" in n and n not in expected
    }
    kubectl(lab, "delete", "namespace", fuzz.NAMESPACE, "--wait=false", check=False)
    return {
        "cases": report.cases,
        "not_a_4xx_status": report.problem_count,
        "server_crashes": lab.status().server_restarts - restarts_before,
        "kernel_objects_for_rejected": len(orphans),
        "pods_known": len(uids),
    }


def r5(lab: Lab) -> dict[str, Any]:
    import urllib.error
    import urllib.request

    from podnet.apiserver.auth.tokens import TokenSigner

    server_url, ca, token, _ = load_kubeconfig(lab.kubeconfig)
    context = ssl.create_default_context(cadata=ca.decode() if ca else None)
    context.check_hostname = False
    sa = lab.api_get("serviceaccounts", "default", "default")
    signer = TokenSigner.from_state_dir(lab.state_dir)
    signer.clock = lambda: time.time() - 7200
    expired, _ = signer.issue_service_account_token(
        "default", "default", sa["metadata"]["uid"], expiration_seconds=600
    )
    url = f"{server_url}/api/v1/namespaces/default/pods"

    def status(headers: dict[str, str], target: str = url) -> str:
        request = urllib.request.Request(target, headers=headers)
        try:
            with urllib.request.urlopen(request, context=context, timeout=5) as answer:
                return str(answer.status)
        except urllib.error.HTTPError as exc:
            return str(exc.code)
        except (urllib.error.URLError, OSError) as exc:
            return f"refused ({type(exc).__name__})"

    answers = {
        "anonymous": status({}),
        "wrong token": status({"Authorization": f"Bearer {token[:-4]}xxxx"}),
        "expired token": status({"Authorization": f"Bearer {expired}"}),
        "plaintext HTTP": status({}, url.replace("https://", "http://")),
    }
    let_in = sum(1 for a in answers.values() if a.startswith("2"))
    return {"answers": answers, "let_in": let_in}


def lab_leftovers(name: str, prefix: str, state_root: Path) -> list[str]:
    found = [f"netns {n}" for n in netns.list_names(prefix)]
    if (state_root / name).exists():
        found.append(f"state {state_root / name}")
    saved = subprocess.run(["iptables-save"], capture_output=True, text=True, check=False).stdout
    found += [f"rule {line}" for line in saved.splitlines() if f"podnet lab {name} " in line]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if f"/{name}/".encode() in cmdline or f"podnet-{name}-".encode() in cmdline:
                found.append(f"process {entry.name}")
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=False)
    from podnet.kernel import names

    for link in (names.ifname(names.LAB_BRIDGE_PREFIX, name),):
        if f" {link}:" in links.stdout or f" {link}@" in links.stdout:
            found.append(f"link {link}")
    return found


def r6(cycles: int) -> dict[str, Any]:
    root = Path(f"/tmp/podnet-r6-{secrets.token_hex(3)}")
    leftovers: list[str] = []
    failed_ups = 0
    for i in range(cycles):
        name = f"r6{secrets.token_hex(2)}"
        spec = LabSpec(name=name, nodes=2, dns=False, state_root=root)
        breaker = None
        if i % 2:  # a fault during `up`
            victim = ("server", "agent-node1", "stop")[(i // 2) % 3]

            def breaker_fn(victim: str = victim, name: str = name) -> None:
                deadline = time.monotonic() + 20
                pids = root / name / "pids"
                while time.monotonic() < deadline:
                    for rec in procs.recorded(pids):
                        if rec.label == victim or (victim == "stop" and rec.label == "agent-node2"):
                            sig = signal.SIGSTOP if victim == "stop" else signal.SIGKILL
                            if procs.is_alive(rec):
                                os.kill(rec.pid, sig)
                            return
                    time.sleep(0.05)

            import threading

            breaker = threading.Thread(target=breaker_fn, daemon=True)
            breaker.start()
        try:
            Lab.up(spec, merge_kubeconfig=False, timeout=60)
        except Exception:
            failed_ups += 1
        if breaker is not None:
            breaker.join(25)
        # a SIGSTOPped agent must be able to die: down sends SIGCONT through nothing here,
        # so thaw by hand what the breaker froze (as `podnet fault clear` would)
        for rec in procs.recorded(root / name / "pids"):
            if procs.is_alive(rec):
                os.kill(rec.pid, signal.SIGCONT)
        down_lab(name, root)
        leftovers += lab_leftovers(name, f"podnet-{name}-", root)
    return {"cycles": cycles, "ups_that_failed": failed_ups, "leftovers": leftovers}


def r7(lab: Lab, writes: int = 1000) -> dict[str, Any]:
    from podnet.api.client import HttpApi
    from podnet.api.errors import ApiError

    name = f"r7-{secrets.token_hex(2)}"
    kubectl(lab, "create", "namespace", name)
    server = next(r for r in procs.recorded(lab.state_dir / "pids") if r.label == "server")
    acknowledged: list[str] = []

    async def burst() -> None:
        api = HttpApi.from_kubeconfig(lab.kubeconfig)
        killed = False
        try:
            for i in range(writes):
                if i == writes // 2 and not killed:
                    os.kill(server.pid, signal.SIGKILL)
                    killed = True
                body = {"metadata": {"name": f"w{i}"}, "data": {"i": str(i)}}
                try:
                    await api.create("configmaps", body, name)
                    acknowledged.append(f"w{i}")
                except (ApiError, OSError):
                    pass
        finally:
            await api.close()

    asyncio.run(burst())
    wait("the API back", lambda: lab.status().server_alive, 60)
    wait("the API answering", lambda: api_answers(lab), 60)
    present = set(kubectl(lab, "-n", name, "get", "cm", "-o", "name").split())
    lost = [w for w in acknowledged if f"configmap/{w}" not in present]
    db = lab.state_dir / "state.db"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        integrity = conn.execute("PRAGMA integrity_check").fetchone()[0]
    kubectl(lab, "delete", "namespace", name, "--wait=false")
    return {
        "writes": writes,
        "acknowledged": len(acknowledged),
        "lost": len(lost),
        "integrity": integrity,
    }


def r8(lab: Lab, seconds: float, rate: float) -> dict[str, Any]:
    ip = deploy_web(lab)
    node_of = json.loads(kubectl(lab, "get", "pods", "-l", "app=web", "-o", "json"))["items"]
    on_node2 = sum(1 for p in node_of if p["spec"]["nodeName"] == "node2")
    load = ServiceLoad(lab["node1"].netns, ip, 80, rate=rate, timeout=1.0)
    load.start()
    time.sleep(1)
    started = time.monotonic()
    fault = faultlib.inject(lab, faultlib.Request("partition", "node2"))
    time.sleep(seconds)
    faultlib.clear_ids(lab, [fault.id])
    healed = time.monotonic()
    back = wait("node2 Ready", lambda: node_ready(lab, "node2") == "True")
    time.sleep(2)
    stats = load.stop()
    failures = stats.failed_at
    during = [f for f in failures if started <= f <= healed]
    avoided_after = (max(during) - started) if during else 0.0
    remove_web(lab)
    return {
        "partition_s": seconds,
        "pods_on_partitioned_node": on_node2,
        "requests": stats.total,
        "failed": stats.failed,
        "traffic_avoids_it_after_s": round(avoided_after, 1),
        "failed_after_that": sum(1 for f in failures if f > started + avoided_after + 0.001),
        "ready_after_heal_s": round(back, 1) if healed else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="R1,R2,R3,R4,R5,R6,R7,R8")
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--modes", default="iptables,nftables,userspace")
    parser.add_argument("--r4-cases", type=int, default=10000)
    parser.add_argument("--r6-cycles", type=int, default=50)
    parser.add_argument("--r8-seconds", type=float, default=60.0)
    args, _unknown = parser.parse_known_args()  # run_all passes its arguments to everyone
    only = set(args.only.upper().split(","))
    modes = args.modes.split(",")
    results: dict[str, Any] = {"config": vars(args)}
    if only - {"R6"}:
        spec = LabSpec(
            name=f"rel{secrets.token_hex(2)}",
            nodes=2,
            dns=False,
            node_grace_seconds=4.0,
            eviction_seconds=8.0,
        )
        lab = Lab.up(spec, merge_kubeconfig=False, timeout=120)
        try:
            for case, run in (
                ("R5", lambda: r5(lab)),
                ("R3", lambda: r3(lab)),
                ("R7", lambda: r7(lab)),
                ("R8", lambda: r8(lab, args.r8_seconds, args.rate)),
                ("R1", lambda: r1(lab, modes, args.rate)),
                ("R2", lambda: r2(lab, modes, args.rate)),
                ("R4", lambda: r4(lab, args.r4_cases)),
            ):
                if case in only:
                    console.rule(case)
                    try:
                        results[case] = run()
                    except Exception as exc:  # one case failing must not hide the others
                        results[case] = {"error": f"{type(exc).__name__}: {exc}"}
                    console.log(f"{case}: {results[case]}")
        finally:
            lab.down()
    if "R6" in only:
        console.rule("R6")
        results["R6"] = r6(args.r6_cycles)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    table = Table("case", "figures", "target", title="podnet reliability")
    for case in sorted(k for k in results if k.startswith("R")):
        value = results[case]
        rows = value if isinstance(value, list) else [value]
        for row in rows:
            table.add_row(case, summary(row), target(case))
    console.print(table)
    console.print(f"wrote {RESULTS}")
    return 0


def summary(row: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in row.items() if k not in ("errors",))


def target(case: str) -> str:
    return {
        "R1": "0 failed",
        "R2": "0/0",
        "R3": "<= 5 s, 0 lost",
        "R4": "0, 0, 0",
        "R5": "0 let in",
        "R6": "0 leftovers",
        "R7": "0 lost, ok",
        "R8": "0 failed after",
    }[case]


if __name__ == "__main__":
    sys.exit(main())
