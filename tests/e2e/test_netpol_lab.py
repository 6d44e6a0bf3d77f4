"""The upstream Netpol probe matrix on a live lab, in each kube-proxy mode.

Namespaces x, y, z; pods a, b, c in each (agnhost porter on TCP and UDP 80 and 81, named
container ports), spread over two nodes, each behind its own Service. For every case of
`podnet.testing.netpol` the policies and labels are written through the API, the test waits
until every node's agent reports (status.json) that it enforces those writes, then probes
from every pod to every pod's ClusterIP and compares with the hand-written truth table,
printing expected and observed side by side on a mismatch, with what each differing cell's
probe saw and what its client's node held right then (the conntrack entry of the probe's
port, the rules naming the ClusterIP, the userspace relay's listener, `proxied-denied`, the
drop counters that moved during the pass); nothing is probed again, so a flake stays a
failure. A probe is what upstream's `agnhost connect --timeout=1s` does (TCP connect; UDP
"hostname" and an answer), made from a socket in the source pod's network namespace: the
packets take the pod's own path (its eth0, the node's proxy and policy rules). Started as one
`agnhost` process per probe through `kubectl exec`, the 300-odd probes of a step were most of
the suite's time (the exec path is tested on its own elsewhere).

Marks: root + slow. One lab for the module; modes switch by restarting the agents.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from podnet.agent.kubelet.sandbox import sandbox_netns_name
from podnet.agent.status import read_status
from podnet.api.client import HttpApi
from podnet.kernel import netns
from podnet.kernel.rules import NftRunner
from podnet.lab import Lab, LabSpec, down_lab
from podnet.testing.netpol import (
    CASES,
    NAMESPACES,
    PODS,
    Case,
    Probe,
    Reachability,
    Step,
    namespace_manifest,
    pod_manifest,
    service_manifest,
)

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.timeout(1800)]

MODES = ("iptables", "nftables", "userspace")
# upstream's probes use agnhost connect --timeout=1s and probe a mismatch again; one probe here
# must survive a SYN lost or delayed on a busy machine: the first retransmission comes after
# 1 s (TCP_TIMEOUT_INIT), so 1 s let one such SYN turn an allowed cell into a blocked one (seen
# once in CI under load: nftables deny-all, z/b -> y/b). A blocked cell costs the whole timeout,
# once per step (a source's probes run at once).
CONNECT_TIMEOUT = 2.5
CONNECTED = "connected"
Obj = dict[str, Any]
# kernel counters read before and after a probe pass (on a mismatch, the ones that moved):
# /proc/net/stat/nf_conntrack columns, and `nstat` names from /proc/net/{snmp,netstat}
CONNTRACK_STATS = ("invalid", "insert_failed", "drop", "early_drop", "clash_resolve")
NSTAT = ("TcpExtListenDrops", "TcpExtListenOverflows", "IpInDiscards", "IpOutNoRoutes",
         "IpInAddrErrors", "TcpAttemptFails", "TcpOutRsts")  # fmt: skip


class NetpolLab:
    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self._netns: dict[str, str] = {}
        self.mode = lab.plan.proxy_mode
        self.written: dict[str, int] = {}  # resource -> resourceVersion of the last write
        self.cluster_ips: dict[str, str] = {}
        self.touched: dict[tuple[str, str], set[str]] = {}  # (resource, key) -> label keys
        self.outcomes: dict[tuple[Probe, str, str], str] = {}  # the last probe's, per cell
        self.counters: dict[str, dict[str, int]] = {}  # node netns -> counters before probing

    # --- the API ----------------------------------------------------------------------------

    def _api(self, *calls: tuple[str, str, Any]) -> list[Obj]:
        """Run API calls (verb, resource, args) in order, recording each write's revision."""

        async def run() -> list[Obj]:
            async with HttpApi.from_kubeconfig(self.lab.kubeconfig) as api:
                out = []
                for verb, resource, args in calls:
                    obj = await getattr(api, verb)(resource, *args)
                    if verb != "list":
                        rv = int(obj["metadata"]["resourceVersion"])
                        self.written[resource] = max(self.written.get(resource, 0), rv)
                    out.append(obj)
                return out

        return asyncio.run(run())

    def relabel(self, resource: str, key: str, changes: dict[str, str | None]) -> None:
        ns, _, name = key.rpartition("/")
        self.touched.setdefault((resource, key), set()).update(changes)
        patch = {"metadata": {"labels": changes}}
        self._api(("patch", resource, (name, patch, ns or None)))

    def apply(self, step: Step) -> None:
        ips = self.pod_ips()
        calls = [
            ("create", "networkpolicies", (p, p["metadata"]["namespace"]))
            for p in step.policies(ips)
        ]
        self._api(*calls)
        for key, changes in step.pod_labels.items():
            self.relabel("pods", key, dict(changes))
        for ns, changes in step.namespace_labels.items():
            self.relabel("namespaces", ns, dict(changes))

    def reset(self) -> None:
        """Back to the model without policies: delete them, drop every label a case added."""
        listed = self._api(("list", "networkpolicies", ()))[0]
        self._api(
            *(
                ("delete", "networkpolicies", (p["metadata"]["name"], p["metadata"]["namespace"]))
                for p in listed["items"]
            )
        )
        for (resource, key), labels in self.touched.items():
            self.relabel(resource, key, dict.fromkeys(labels))
        self.touched = {}
        self.wait_enforced()

    def pods(self) -> dict[str, Obj]:
        listed = self._api(("list", "pods", ()))[0]["items"]
        return {
            f"{p['metadata']['namespace']}/{p['metadata']['name']}": p
            for p in listed
            if p["metadata"]["namespace"] in NAMESPACES
        }

    def pod_ips(self) -> dict[str, str]:
        return {key: str(p["status"].get("podIP", "")) for key, p in self.pods().items()}

    def all_ready(self) -> bool:
        pods = self.pods()
        return all(
            any(
                c.get("type") == "Ready" and c.get("status") == "True"
                for c in pods.get(key, {}).get("status", {}).get("conditions") or ()
            )
            for key in PODS
        )

    # --- waiting --------------------------------------------------------------------------------

    def wait_enforced(self, since: float = 0.0, timeout: float = 60.0) -> None:
        """Until every node's agent enforces every write so far (and, with `since`, has synced
        after that moment: a restarted agent)."""
        deadline = time.monotonic() + timeout
        while True:
            statuses = {
                n.name: read_status(Path(n.state_dir), "policy") for n in self.lab.plan.nodes
            }
            if all(
                s is not None
                and float(s.get("synced_at") or 0) > since
                and all(
                    int(s["revisions"][r]) >= rv
                    for r, rv in self.written.items()
                    if r in s.get("revisions", {})  # what this agent watches
                )
                for s in statuses.values()
            ):
                return
            assert time.monotonic() < deadline, f"not enforced: {self.written} vs {statuses}"
            time.sleep(0.05)

    def wait_all_connected(self, timeout: float = 120.0) -> None:
        """The model without policies: every pod reaches every Service (polling only the pairs
        not connected yet — a freshly started proxy programs its rules within seconds)."""
        deadline = time.monotonic() + timeout
        missing = {(s, d) for s in PODS for d in PODS}
        while missing:
            probe = Probe(80, "TCP")
            observed = self.probe([probe], pairs=missing)[probe]
            missing = {(s, d) for s, d in missing if not observed[s][d]}
            assert time.monotonic() < deadline or not missing, f"never connected: {sorted(missing)}"

    def use_mode(self, mode: str) -> None:
        if mode == self.mode:
            return
        since = time.time()
        self.lab.restart_agents(proxy_mode=mode, timeout=180)
        self.mode = mode
        # a restarted agent lists everything before its first sync: every earlier write is
        # in it, including deletions whose revisions no listed object carries
        self.written = {}
        self.wait_enforced(since)
        self.wait_proxy_mode(mode)
        self.wait_all_connected()

    def wait_proxy_mode(self, mode: str, timeout: float = 60.0) -> None:
        """Until every node's proxy reports (status.json) a sync in `mode`: its rules are in and
        the flows that bypassed them meanwhile are deleted. Probing before that sent SYNs past
        the missing rules, un-NATed, and their conntrack entries (120 s) black-holed later
        probes that drew the same source port (the userspace flake; the proxy deletes them
        since b36b019, but only after its first sync)."""
        deadline = time.monotonic() + timeout
        while True:
            statuses = {
                n.name: read_status(Path(n.state_dir), "proxy") for n in self.lab.plan.nodes
            }
            if all(s is not None and s.get("mode") == mode for s in statuses.values()):
                return
            assert time.monotonic() < deadline, f"proxy not in {mode}: {statuses}"
            time.sleep(0.05)

    # --- probing ----------------------------------------------------------------------------

    def pod_netns(self) -> dict[str, str]:
        """Pod key -> its sandbox's network namespace (the pods live as long as the lab)."""
        if not self._netns:
            for key, pod in self.pods().items():
                node = self.lab[pod["spec"]["nodeName"]]
                uid = str(pod["metadata"]["uid"])
                self._netns[key] = sandbox_netns_name(node.pod_netns_prefix, uid)
        return self._netns

    def probe(
        self, probes: Sequence[Probe], pairs: set[tuple[str, str]] | None = None
    ) -> dict[Probe, dict[str, dict[str, bool]]]:
        """For each probe, src -> dst's ClusterIP for every pair (or the given ones): connected
        or not. Each source pod's connects run at once, in its network namespace."""
        wanted = pairs if pairs is not None else {(s, d) for s in PODS for d in PODS}
        by_source: dict[str, list[str]] = {}
        for src, dst in sorted(wanted):
            by_source.setdefault(src, []).append(dst)
        sandboxes = self.pod_netns()

        def run(src: str) -> dict[tuple[Probe, str], str]:
            targets = [(probe, d) for probe in probes for d in by_source[src]]

            async def all_at_once() -> list[str]:
                return await asyncio.gather(
                    *(connect(self.cluster_ips[d], p.port, p.protocol) for p, d in targets)
                )

            answers = netns.call_in(sandboxes[src], lambda: asyncio.run(all_at_once()))
            return dict(zip(targets, answers, strict=True))

        observed: dict[Probe, dict[str, dict[str, bool]]] = {
            probe: {s: {} for s in PODS} for probe in probes
        }
        self.outcomes = {}
        with ThreadPoolExecutor(len(by_source)) as pool:
            for src, result in zip(by_source, pool.map(run, by_source), strict=True):
                for (probe, dst), outcome in result.items():
                    observed[probe][src][dst] = outcome == CONNECTED
                    self.outcomes[(probe, src, dst)] = outcome
        return observed

    def explain(self, probe: Probe, cells: Sequence[tuple[str, str]]) -> str:
        """What each of these cells' probe saw (connected, or how it failed and after how long):
        a dropped SYN times out, a refused one is reset at once."""
        return "".join(
            f"  {src} -> {dst} ({self.cluster_ips[dst]}:{probe.port}/{probe.protocol}): "
            f"{self.outcomes.get((probe, src, dst), 'not probed')}\n"
            for src, dst in cells
        )

    # --- what the nodes held (a mismatch's diagnosis) -----------------------------------------

    def node_netns(self) -> dict[str, str]:
        """Pod key -> the network namespace of the node it runs on."""
        by_name = {n.name: n.netns for n in self.lab.plan.nodes}
        return {key: by_name[p["spec"]["nodeName"]] for key, p in self.pods().items()}

    @staticmethod
    def read_counters(node: str) -> dict[str, int]:
        """The node's drop-ish kernel counters and the policy table's named counters."""

        def read() -> dict[str, int]:
            out: dict[str, int] = {}
            lines = Path("/proc/thread-self/net/stat/nf_conntrack").read_text().split("\n")
            head = lines[0].split()
            for line in filter(None, lines[1:]):  # one line per CPU, hex
                for name, value in zip(head, line.split(), strict=False):
                    if name in CONNTRACK_STATS:
                        out[f"conntrack {name}"] = out.get(f"conntrack {name}", 0) + int(value, 16)
            for table in ("snmp", "netstat"):
                rows = Path(f"/proc/thread-self/net/{table}").read_text().split("\n")
                for names, values in zip(rows[::2], rows[1::2], strict=False):
                    prefix, *keys = names.split()
                    for key, value in zip(keys, values.split()[1:], strict=False):
                        if prefix[:-1] + key in NSTAT:
                            out[prefix[:-1] + key] = int(value)
            return out

        found = netns.call_in(node, read)
        for name, packets in NftRunner(node).counters("inet", "podnet-policy").items():
            found[f"nft {name}"] = packets
        return found

    def snapshot(self) -> None:
        """Counters of every node before a probe pass (a mismatch reports what moved)."""
        self.counters = {n.netns: self.read_counters(n.netns) for n in self.lab.plan.nodes}

    def diagnose(self, probe: Probe, cells: Sequence[tuple[str, str]]) -> str:
        """What the client's node held for each differing cell, read before anything changes
        (nothing is probed again): the cell's conntrack entry (by the probe's local port), the
        rules naming the ClusterIP, the userspace relay's listener, whether the policy table's
        `proxied-denied` holds the cell, and the counters that moved during the probe pass."""
        nodes, ips = self.node_netns(), self.pod_ips()
        proto = probe.protocol.lower()
        out: list[str] = []

        def run(node: str, *argv: str) -> list[str]:
            done = netns.run(list(argv), node)
            return [line for line in (done.stdout + done.stderr).split("\n") if line.strip()]

        for src, dst in cells:
            node, client, vip = nodes[src], ips[src], self.cluster_ips[dst]
            out.append(f"  {src} -> {dst} on {node}:")
            try:
                port = re.search(r"local port (\d+)", self.outcomes.get((probe, src, dst), ""))
                ct = ["conntrack", "-L", "-p", proto, "-s", client]
                ct += ["--sport", port.group(1)] if port else ["-d", vip]
                out += [f"    conntrack: {line}" for line in run(node, *ct)[:6]]
                rules = run(node, "iptables-save", "-t", "nat") + run(
                    node, "nft", "list", "table", "ip", "kube-proxy"
                )
                named = [r for r in rules if vip in r and str(probe.port) in r and proto in r]
                out += [f"    rule: {r.strip()}" for r in named[:4]] or ["    rule: none"]
                for r in named:
                    if (to := re.search(r"--to-ports (\d+)", r)) is not None:
                        listen = run(node, "ss", "-Hln" + proto[0], f"sport = :{to.group(1)}")
                        out.append(f"    relay :{to.group(1)}: {listen or 'NOT LISTENING'}")
                if self.mode == "userspace":
                    denied = run(node, "nft", "list", "set", "inet", "podnet-policy",
                                 "proxied-denied")  # fmt: skip
                    cell = f"{client} . {vip} . {proto} . {probe.port}"
                    out.append(f"    proxied-denied holds it: {cell in ' '.join(denied)}")
                before, after = self.counters.get(node, {}), self.read_counters(node)
                moved = {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}
                out.append(f"    counters moved during the pass: {moved or 'none'}")
            except Exception as exc:  # a diagnosis must never hide the mismatch itself
                out.append(f"    (diagnosis failed: {exc!r})")
        return "\n".join(out) + "\n"


async def connect(address: str, port: int, protocol: str) -> str:
    """What `agnhost connect ADDRESS:PORT --timeout=1s --protocol=P` finds, from a socket of
    the calling thread's namespace: TCP connects; UDP sends "hostname" and gets an answer.
    CONNECTED, or how it failed (timed out or the error, the local port, after how long)."""
    loop = asyncio.get_running_loop()
    kind = socket.SOCK_DGRAM if protocol == "UDP" else socket.SOCK_STREAM
    started = time.monotonic()
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.setblocking(False)
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                await loop.sock_connect(sock, (address, port))
                if protocol == "UDP":
                    await loop.sock_sendall(sock, b"hostname")
                    await loop.sock_recv(sock, 2048)
        except (OSError, TimeoutError) as exc:
            what = "timed out" if isinstance(exc, TimeoutError) else f"error: {exc}"
            local = sock.getsockname()[1]
            return f"{what} (local port {local}, after {time.monotonic() - started:.2f} s)"
    return CONNECTED


@pytest.fixture(scope="module")
def netpol(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetpolLab]:
    state_root = tmp_path_factory.mktemp("netpol-state")
    name = f"tnp{secrets.token_hex(2)}"
    lab = Lab.up(
        LabSpec(name=name, nodes=2, state_root=state_root, dns=False),
        merge_kubeconfig=False,
        timeout=180,
    )
    try:
        cluster = NetpolLab(lab)
        calls: list[tuple[str, str, Any]] = [
            ("create", "namespaces", (namespace_manifest(ns),)) for ns in NAMESPACES
        ]
        for i, key in enumerate(PODS):
            ns, pod = key.split("/")
            node = lab.plan.nodes[i % len(lab.plan.nodes)].name
            calls.append(("create", "pods", (pod_manifest(ns, pod, node), ns)))
            calls.append(("create", "services", (service_manifest(ns, pod), ns)))
        created = cluster._api(*calls)
        cluster.cluster_ips = {
            f"{s['metadata']['namespace']}/{s['metadata']['name'][2:]}": s["spec"]["clusterIP"]
            for s in created
            if s.get("kind") == "Service"
        }
        deadline = time.monotonic() + 120
        while not cluster.all_ready():
            assert time.monotonic() < deadline, cluster.pods()
            time.sleep(0.5)
        cluster.wait_enforced()
        cluster.wait_all_connected()
        yield cluster
    finally:
        down_lab(name, state_root)


@pytest.mark.parametrize(
    ("mode", "case"),
    [(mode, case) for mode in MODES for case in CASES],
    ids=[f"{mode}-{case.name}" for mode in MODES for case in CASES],
)
def test_probe_matrix(netpol: NetpolLab, mode: str, case: Case) -> None:
    netpol.use_mode(mode)
    try:
        for number, step in enumerate(case.steps, 1):
            netpol.apply(step)
            netpol.wait_enforced()
            netpol.snapshot()
            observed_by_probe = netpol.probe(list(step.expected))
            for probe, expected_of in step.expected.items():
                expected: Reachability = expected_of()
                observed = observed_by_probe[probe]
                mismatches = expected.mismatches(observed)
                assert not mismatches, (
                    f"{mode} {case.name} step {number} probe {probe}: "
                    f"{len(mismatches)} cells differ\n"
                    + expected.side_by_side(observed)
                    + "what the differing cells' probes saw:\n"
                    + netpol.explain(probe, mismatches)
                    + "what their client's node held:\n"
                    + netpol.diagnose(probe, mismatches)
                )
    finally:
        netpol.reset()


def test_podnet_status_shows_the_isolated_pods(netpol: NetpolLab) -> None:
    netpol.apply(CASES[0].steps[0])  # default-deny-ingress in x
    try:
        netpol.wait_enforced()
        shown = subprocess.run(
            [sys.executable, "-m", "podnet.cli.main", "status", "--name", netpol.lab.name,
             "--state-root", str(Path(netpol.lab.plan.state_dir).parent)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert shown.returncode == 0, shown.stdout + shown.stderr
        for pod in ("x/a", "x/b", "x/c"):
            assert pod in shown.stdout, shown.stdout
        assert "x/deny-ingress" in shown.stdout

        def scrape() -> str:  # the agent's /metrics listens on the node's loopback
            with urllib.request.urlopen("http://127.0.0.1:10249/metrics", timeout=10) as r:
                return str(r.read().decode())

        metrics = netns.call_in(netpol.lab.plan.nodes[0].netns, scrape)
        assert "podnet_networkpolicy_policies 1" in metrics
    finally:
        netpol.reset()
