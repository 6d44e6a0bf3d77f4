"""`podnet demo`: the explainer's story, told on a live two-node lab with real commands.

Chapters follow the explainer podnet implements: a pod is one network shared by its
containers; `kubectl get -o jsonpath` and `kubectl exec -c`; pod to pod on one node (the
bridge) and across nodes (flannel), with the path each packet takes (`podnet trace`); a
Service in front of a Deployment, answering round robin (`podnet trace --verify` through the
ClusterIP) and then with ClientIP affinity; a pod dies, a new one with a
new IP takes its place and the Service keeps answering; the same Service under each kube-proxy
mode. Every claim the story makes is also recorded in `DemoResult`, which the end-to-end test
checks, so the story cannot silently stop being true.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from podnet.agent.status import caught_up, read_status
from podnet.demo import manifests
from podnet.demo.narrator import Narrator, StepFailed
from podnet.lab.spec import DEFAULT_STATE_ROOT, PROXY_MODES, load_plan

RESOURCE_VERSION = "jsonpath={.metadata.resourceVersion}"


@dataclass
class DemoOptions:
    name: str = "demo"
    backend: str = "vxlan"
    proxy_mode: str = "iptables"
    step: bool = False
    keep: bool = False
    modes: tuple[str, ...] = PROXY_MODES
    state_root: Path = DEFAULT_STATE_ROOT
    # where this kernel has no IP_VS, show ipvs mode on a node that boots its own kernel
    vm_ipvs: bool = True


@dataclass
class DemoResult:
    localhost_reply: str = ""
    jsonpath: str = ""
    exec_hostname: str = ""
    same_node_reply: str = ""
    cross_node_reply: str = ""
    round_robin: Counter[str] = field(default_factory=Counter)
    endpoints: list[str] = field(default_factory=list)
    affinity: Counter[str] = field(default_factory=Counter)
    killed_pod: tuple[str, str] = ("", "")  # name, ip
    replacement_pod: tuple[str, str] = ("", "")
    endpoints_after: list[str] = field(default_factory=list)  # once the replacement is Ready
    survival_failures: int = -1
    survival_requests: int = 0
    modes: dict[str, str] = field(default_factory=dict)  # mode -> "ok: ..." or the refusal
    trace_cross_node: bool = False  # `podnet trace` followed alpha → gamma to the socket
    trace_cluster_ip: bool = False  # `podnet trace --verify` through the ClusterIP agreed


class Story:
    def __init__(self, options: DemoOptions, console: Console) -> None:
        self.o = options
        self.result = DemoResult()
        self.kubeconfig = options.state_root / options.name / "kubeconfig"
        podnet = str(Path(sys.executable).with_name("podnet"))
        kubectl = shutil.which("kubectl") or "kubectl"
        self.podnet = podnet
        self.narrator = Narrator(
            console,
            env={"KUBECONFIG": str(self.kubeconfig)},
            step_mode=options.step,
            shown_aliases={podnet: "podnet", kubectl: "kubectl"},
        )
        self.kubectl_bin = kubectl

    # -- small helpers -------------------------------------------------------------------------

    def kubectl(
        self,
        *args: str,
        show: bool = True,
        check: bool = True,
        stdin: str | None = None,
        timeout: float = 120.0,
    ) -> str:
        proc = self.narrator.run(
            [self.kubectl_bin, *args], check=check, stdin=stdin, show_output=show, timeout=timeout
        )
        return proc.stdout.strip()

    def quiet(self, *args: str) -> str:
        """A kubectl read the story needs but does not show."""
        proc = subprocess.run(
            [self.kubectl_bin, "--kubeconfig", str(self.kubeconfig), *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        return proc.stdout.strip() if proc.returncode == 0 else ""

    def apply(self, manifest: str) -> None:
        self.kubectl("apply", "-f", "-", stdin=manifest)

    def wait_ready(self, *pods: str, timeout: int = 90) -> None:
        self.kubectl(
            "wait",
            "--for=condition=Ready",
            *(f"pod/{p}" for p in pods),
            f"--timeout={timeout}s",
            timeout=timeout + 10,
        )

    def pod_ip(self, name: str) -> str:
        return self.quiet("get", "pod", name, "-o", "jsonpath={.status.podIP}")

    def requests(self, url: str, count: int, label: str, client: str = "client") -> Counter[str]:
        script = (
            f"for i in $(seq {count}); do timeout 3 wget -q -O - {url} || echo FAILED; echo; done"
        )
        out = self.kubectl("exec", client, "--", "sh", "-c", script, show=False)
        replies = Counter(line.strip() for line in out.splitlines() if line.strip())
        table = Table(title=label)
        table.add_column("answered by")
        table.add_column("requests", justify="right")
        for who, n in sorted(replies.items()):
            table.add_row(who, str(n))
        self.narrator.console.print(table)
        return replies

    def one_request(self, url: str) -> str:
        """One request from the client pod, not shown: '' if it failed."""
        proc = subprocess.run(
            [self.kubectl_bin, "--kubeconfig", str(self.kubeconfig), "exec", "client", "--",
             "timeout", "3", "wget", "-q", "-O", "-", url],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        return proc.stdout.strip() if proc.returncode == 0 else ""

    def answer(self, url: str) -> str | None:
        return self.one_request(url) or None

    def service_endpoints(self) -> list[str]:
        ips = self.quiet(
            "get", "endpoints", "hostnames", "-o", "jsonpath={.subsets[*].addresses[*].ip}"
        )
        return sorted(ips.split())

    def ready_slices(self, count: int) -> int | None:
        """The highest resourceVersion of the Service's EndpointSlices once they list `count`
        ready endpoints (kube-proxy reads the slices, not the Endpoints), else None."""
        found = self.quiet(
            "get", "endpointslices", "-l", "kubernetes.io/service-name=hostnames", "-o", "json"
        )
        items = json.loads(found).get("items", []) if found else []
        ready = [
            address
            for item in items
            for endpoint in item.get("endpoints") or []
            if (endpoint.get("conditions") or {}).get("ready")
            for address in endpoint.get("addresses") or []
        ]
        if len(ready) != count:
            return None
        return max(int(item["metadata"]["resourceVersion"]) for item in items)

    def wait_programmed(self, what: str, **wanted: int) -> None:
        """Until every node's kube-proxy has programmed at least these revisions (keyword:
        `services` / `endpointslices`): each agent's proxy writes the highest one whose rules
        are in its kernel to `proxy/status.json` after every sync (`agent/status.py`). Sending
        traffic earlier races the proxies, which program a second or so after a change."""
        plan = load_plan(self.o.state_root / self.o.name)
        # a VM node's agent writes its status inside the VM, out of the host's reach
        nodes = [Path(n.state_dir) for n in plan.nodes if not n.vm] if plan is not None else []

        def programmed() -> bool | None:
            done = all(caught_up(read_status(node, "proxy"), wanted) for node in nodes)
            return True if done and nodes else None

        self.narrator.wait_for(f"every node's kube-proxy has programmed {what}", programmed)

    # -- the chapters ----------------------------------------------------------------------------

    def run(self) -> DemoResult:
        chapters = [
            self.bring_up,
            self.one_pod_one_network,
            self.jsonpath_and_exec,
            self.pod_to_pod,
            self.service_round_robin,
            self.session_affinity,
            self.pod_dies_service_survives,
            self.proxy_modes,
        ]
        for number, chapter in enumerate(chapters, start=1):
            chapter(number)
        return self.result

    def bring_up(self, n: int) -> None:
        self.narrator.chapter(
            n,
            "A two-node cluster on this machine",
            (
                "Each **node** is a Linux network namespace on an underlay bridge; the API server "
                "runs on the host, and a `podnet agent` (kubelet, flannel, kube-proxy) runs in "
                f"each node. Backend **{self.o.backend}**, kube-proxy mode **{self.o.proxy_mode}**."
            ),
        )
        self.narrator.run(
            [
                self.podnet,
                "up",
                "--name",
                self.o.name,
                "--nodes",
                "2",
                "--backend",
                self.o.backend,
                "--proxy-mode",
                self.o.proxy_mode,
                "--no-kubeconfig",
            ],
            timeout=180,
        )
        self.narrator.note(f"export KUBECONFIG={self.kubeconfig}")
        self.kubectl("get", "nodes", "-o", "wide")

    def one_pod_one_network(self, n: int) -> None:
        self.narrator.chapter(
            n,
            "A pod is one network shared by its containers",
            (
                "The pod `twins` has two containers. They are separate processes with separate "
                "filesystems, but they share one network namespace: the sidecar reaches the web "
                "container on **127.0.0.1**, as if they ran on one machine."
            ),
        )
        self.apply(manifests.TWO_CONTAINER_POD)
        self.wait_ready("twins")
        self.result.localhost_reply = self.kubectl(
            "exec",
            "twins",
            "-c",
            "sidecar",
            "--",
            "wget",
            "-q",
            "-O",
            "-",
            "http://127.0.0.1:8080/hostname",
        )

    def jsonpath_and_exec(self, n: int) -> None:
        self.narrator.chapter(
            n,
            "Which containers does a pod have?",
            (
                "The explainer's own commands: list the images and then the names of a pod's "
                "containers, and run a command in a chosen container with `-c`."
            ),
        )
        self.result.jsonpath = self.kubectl(
            "get",
            "pod",
            "twins",
            "-o",
            "jsonpath={$.spec.containers[*].image} {$.spec.containers[*].name}",
        )
        self.result.exec_hostname = self.kubectl("exec", "twins", "-c", "web", "--", "hostname")

    def pod_to_pod(self, n: int) -> None:
        self.narrator.chapter(
            n,
            "Pod to pod: over the bridge, and across nodes",
            (
                "Three more pods: `alpha` and `beta` on node1, `gamma` on node2, and a `client`. "
                "On one node a packet goes pod eth0 → veth → the node's bridge **cni0** → veth → "
                "the other pod. Across nodes it leaves cni0 for the flannel device, is carried "
                "over the underlay to the other node, and comes back up through its cni0."
            ),
        )
        for name, node in (("alpha", "node1"), ("beta", "node1"), ("gamma", "node2")):
            self.apply(manifests.netexec_pod(name, node))
        self.apply(manifests.client_pod("client", "node1"))
        self.wait_ready("alpha", "beta", "gamma", "client")
        self.kubectl("get", "pods", "-o", "wide")
        beta, gamma = self.pod_ip("beta"), self.pod_ip("gamma")
        self.result.same_node_reply = self.kubectl(
            "exec", "alpha", "--", "wget", "-q", "-O", "-", f"http://{beta}:8080/hostname"
        )
        self.result.cross_node_reply = self.kubectl(
            "exec", "alpha", "--", "wget", "-q", "-O", "-", f"http://{gamma}:8080/hostname"
        )
        self.kubectl("exec", "alpha", "--", "ping", "-c", "2", "-W", "2", gamma)
        self.narrator.say(
            "The path, hop by hop, as the kernels of the two nodes see it. `podnet trace` reads "
            "every namespace on the way — the pod's route, the veth, the bridge's fdb, the node's "
            "route, each netfilter chain and rule, the overlay's neighbour and fdb entries and "
            "the outer header — and follows the first packet and its reply:"
        )
        proc = self.narrator.run(
            [self.podnet, "trace", "--name", self.o.name, "alpha", "gamma", "--port", "8080"],
            check=False,
        )
        self.result.trace_cross_node = proc.returncode == 0 and "✓ delivered" in proc.stdout

    def service_round_robin(self, n: int) -> None:
        self.narrator.chapter(
            n,
            "A Service in front of a Deployment",
            (
                "A Deployment keeps 3 replicas of a pod that answers its own name; a Service gives "
                "them one virtual **ClusterIP**. kube-proxy on every node programs the kernel so a "
                "connection to ClusterIP:80 is sent to one of the ready pods."
            ),
        )
        self.apply(manifests.HOSTNAMES_DEPLOYMENT)
        self.apply(manifests.HOSTNAMES_SERVICE)
        self.kubectl("rollout", "status", "deployment/hostnames", "--timeout=90s", timeout=100)
        self.narrator.wait_for(
            "the Service has 3 ready endpoints",
            lambda: eps if len(eps := self.service_endpoints()) == 3 else None,
        )
        self.kubectl("get", "service,endpoints", "hostnames")
        self.result.endpoints = self.service_endpoints()
        slices = self.narrator.wait_for(
            "the EndpointSlice lists 3 ready endpoints", functools.partial(self.ready_slices, 3)
        )
        self.wait_programmed(
            "the Service and its 3 endpoints",
            services=int(self.quiet("get", "service", "hostnames", "-o", RESOURCE_VERSION)),
            endpointslices=slices,
        )
        self.result.round_robin = self.requests(
            f"http://{self.cluster_ip()}/hostname", 30, "30 requests to the ClusterIP"
        )
        self.narrator.say(
            "Through the ClusterIP: kube-proxy's rules pick one of the three pods at random and "
            "rewrite the destination (DNAT); the reply is rewritten back by conntrack. With "
            "`--verify`, `podnet trace` also sends a real probe from `client` with netfilter "
            "tracing switched on for just that packet, and puts what the kernels reported next "
            "to what it predicted, rule by rule:"
        )
        proc = self.narrator.run(
            [self.podnet, "trace", "--name", self.o.name, "client", "svc/hostnames", "--verify"],
            check=False,
        )
        self.result.trace_cluster_ip = proc.returncode == 0

    def cluster_ip(self) -> str:
        return self.quiet("get", "service", "hostnames", "-o", "jsonpath={.spec.clusterIP}")

    def session_affinity(self, n: int) -> None:
        self.narrator.chapter(
            n,
            "Session affinity: ClientIP",
            (
                "With `sessionAffinity: ClientIP`, kube-proxy remembers which pod a client IP was "
                "sent to and keeps sending it there (until `timeoutSeconds`, 3 hours by default)."
            ),
        )
        self.set_affinity("ClientIP")
        self.result.affinity = self.requests(
            f"http://{self.cluster_ip()}/hostname", 15, "15 requests with ClientIP affinity"
        )
        self.set_affinity("None")

    def set_affinity(self, affinity: str) -> None:
        revision = self.kubectl(
            "patch", "service", "hostnames", "-p",
            json.dumps({"spec": {"sessionAffinity": affinity}}), "-o", RESOURCE_VERSION, show=False,
        )  # fmt: skip
        self.wait_programmed(f"sessionAffinity {affinity}", services=int(revision))

    def pod_dies_service_survives(self, n: int) -> None:
        self.narrator.chapter(
            n,
            "A pod dies; the Service does not notice",
            (
                "We delete one of the three pods while the client keeps calling the Service. The "
                "ReplicaSet starts a replacement, which gets a **new IP**; the endpoints follow, "
                "and nothing that uses the ClusterIP has to change. (The dying pod keeps "
                "serving for a few seconds after SIGTERM, so every node's kube-proxy has "
                "dropped it before it stops answering: graceful termination.)"
            ),
        )
        pods = self.quiet(
            "get", "pods", "-l", "app=hostnames", "-o", "jsonpath={.items[*].metadata.name}"
        ).split()
        victim = sorted(pods)[0]
        self.result.killed_pod = (victim, self.pod_ip(victim))

        count = 40
        loop = subprocess.Popen(
            [
                self.kubectl_bin,
                "--kubeconfig",
                str(self.kubeconfig),
                "exec",
                "client",
                "--",
                "sh",
                "-c",
                f"for i in $(seq {count}); do timeout 3 wget -q -O - http://{self.cluster_ip()}/hostname"
                " || echo FAILED; echo; sleep 0.1; done",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.kubectl("delete", "pod", victim, "--wait=false")
        out, _ = loop.communicate(timeout=120)
        replies = [line.strip() for line in out.splitlines() if line.strip()]
        self.result.survival_requests = len(replies)
        self.result.survival_failures = sum(1 for r in replies if r == "FAILED")
        self.kubectl("rollout", "status", "deployment/hostnames", "--timeout=90s", timeout=100)

        def replacement() -> tuple[str, str] | None:
            names = self.quiet(
                "get",
                "pods",
                "-l",
                "app=hostnames",
                "--field-selector",
                "status.phase=Running",
                "-o",
                "jsonpath={.items[*].metadata.name}",
            ).split()
            fresh = [p for p in names if p not in pods]
            if fresh and (ip := self.pod_ip(fresh[0])):
                return fresh[0], ip
            return None

        self.result.replacement_pod = self.narrator.wait_for("a replacement pod", replacement)
        fresh_ip, dead_ip = self.result.replacement_pod[1], self.result.killed_pod[1]
        self.result.endpoints_after = self.narrator.wait_for(
            "the endpoints to list the replacement, not the dead pod",
            lambda: eps
            if fresh_ip in (eps := self.service_endpoints()) and dead_ip not in eps
            else None,
        )
        self.kubectl("get", "pods", "-l", "app=hostnames", "-o", "wide")
        self.kubectl("get", "endpoints", "hostnames")
        self.narrator.say(
            f"`{victim}` ({self.result.killed_pod[1]}) is gone; `{self.result.replacement_pod[0]}`"
            f" has the new IP {self.result.replacement_pod[1]}. Of {self.result.survival_requests}"
            f" requests sent during the swap, {self.result.survival_failures} failed."
        )

    def proxy_modes(self, n: int) -> None:
        self.narrator.chapter(
            n,
            "The same Service under every kube-proxy mode",
            (
                "kube-proxy has had several designs: **userspace** (a real socket per service, "
                "iptables redirects to it), **iptables** (DNAT chains with random probabilities), "
                "**nftables** (verdict maps) and **ipvs** (the kernel's L4 load balancer). We "
                "restart the node agents in each mode; pods keep running."
            ),
        )
        for mode in self.o.modes:
            proc = self.narrator.run(
                [self.podnet, "proxy-mode", "--name", self.o.name, mode], check=False, timeout=120
            )
            if proc.returncode != 0:
                self.result.modes[mode] = refusal(proc.stdout + proc.stderr)
                if mode == "ipvs":
                    self.narrator.say(
                        "The agents refused **ipvs**: this kernel has no IP Virtual Server "
                        "(`CONFIG_IP_VS`), the in-kernel L4 load balancer that mode programs. "
                        "`--proxy-fallback` runs iptables instead, as kube-proxy did when IPVS "
                        "was missing."
                    )
                    why_not = vm_unavailable() if self.o.vm_ipvs else "not asked for"
                    if why_not is None:
                        self.result.modes[mode] = self.ipvs_on_a_vm_node()
                    else:
                        self.narrator.say(f"(No VM node to show it on: {why_not}.)")
                continue
            url = f"http://{self.cluster_ip()}/hostname"
            try:
                self.narrator.wait_for(
                    f"the Service answers in {mode} mode", functools.partial(self.answer, url)
                )
            except StepFailed as exc:
                self.result.modes[mode] = f"failed: {exc}"
                continue
            replies = self.requests(url, 15, f"15 requests in {mode} mode")
            answered = sorted(r for r in replies if r != "FAILED")
            self.result.modes[mode] = (
                f"ok: {len(answered)} pods answered, {replies['FAILED']} failures"
            )
        if self.result.modes.get("ipvs", "").endswith(")"):  # a VM node runs ipvs
            self.narrator.say(
                "The lab stays in ipvs mode with the fallback: switching back would boot the "
                f"VM node again. `podnet proxy-mode --name {self.o.name} {self.o.proxy_mode} "
                "--no-proxy-fallback` does it."
            )
            return
        self.narrator.run(
            [
                self.podnet,
                "proxy-mode",
                "--name",
                self.o.name,
                self.o.proxy_mode,
                "--no-proxy-fallback",
            ],
            check=False,
            timeout=120,
        )

    def ipvs_on_a_vm_node(self) -> str:
        """ipvs mode where it can run: a third node that boots a kernel of its own."""
        self.narrator.say(
            "A node can bring its own kernel: `podnet add-node --vm` boots Debian's kernel "
            "under qemu as one more node on the same underlay and overlay. Its kernel has "
            "IPVS. The namespace nodes fall back to iptables; the VM node runs **ipvs**."
        )
        name = self.o.name
        self.narrator.run(
            [self.podnet, "proxy-mode", "--name", name, "ipvs", "--proxy-fallback"], timeout=150
        )
        before = set(self.quiet("get", "nodes", "-o", "jsonpath={.items[*].metadata.name}").split())
        self.narrator.run(
            [self.podnet, "add-node", "--name", name, "--vm", "--timeout", "300"], timeout=360
        )
        after = self.quiet("get", "nodes", "-o", "jsonpath={.items[*].metadata.name}").split()
        node = next(n for n in after if n not in before)
        self.apply(manifests.client_pod("vm-client", node))
        self.wait_ready("vm-client", timeout=240)
        cluster_ip = self.cluster_ip()
        self.narrator.run(
            [self.podnet, "vm-exec", "--name", name, node, "--", "ipvsadm", "-Ln", "-t",
             f"{cluster_ip}:80"],
        )  # fmt: skip
        url = f"http://{cluster_ip}/hostname"
        replies = self.requests(url, 15, f"15 requests from {node} in ipvs mode", "vm-client")
        answered = sorted(r for r in replies if r != "FAILED")
        self.narrator.say(
            f"IPVS in {node}'s kernel spread the requests round robin over "
            f"{len(answered)} pods, the ones on the namespace nodes through the VXLAN overlay."
        )
        return f"ok: {len(answered)} pods answered, {replies['FAILED']} failures (on VM {node})"

    def tear_down(self) -> None:
        if self.o.keep:
            self.narrator.say(
                f"The lab **{self.o.name}** is still up. Use it with\n\n"
                f"    export KUBECONFIG={self.kubeconfig}\n    kubectl get pods -o wide\n\n"
                f"and remove it with `podnet down --name {self.o.name}`."
            )
            return
        self.narrator.run([self.podnet, "down", "--name", self.o.name], check=False, timeout=120)


def vm_unavailable() -> str | None:
    """Why a VM node cannot boot here (qemu or the kernel package missing), or None."""
    from podnet.lab.spec import LabError
    from podnet.lab.vm import check_host

    try:
        check_host(None)
    except LabError as exc:
        return str(exc)
    return None


def refusal(output: str) -> str:
    """The reason an agent gave for refusing to start, from `podnet proxy-mode`'s output."""
    marker = "agent stopped on error:"
    text = " ".join(output.split())
    if marker in text:
        reason = text.split(marker, 1)[1]
        # the log line ends where the next log record (its timestamp) begins
        return re.split(r"\s\d{4}-\d{2}-\d{2} ", reason, maxsplit=1)[0].strip()
    lines = output.strip().splitlines()
    return lines[-1] if lines else "refused (no output)"


def summarize(result: DemoResult, console: Console) -> bool:
    """Print the story's claims and whether each held; True when all did."""
    claims = [
        ("containers of one pod talk over localhost", result.localhost_reply == "twins"),
        (
            "jsonpath lists images then names",
            result.jsonpath.endswith("web sidecar") and "agnhost" in result.jsonpath,
        ),
        ("kubectl exec -c runs in the named container", result.exec_hostname == "twins"),
        ("pod to pod on one node", result.same_node_reply == "beta"),
        ("pod to pod across nodes", result.cross_node_reply == "gamma"),
        ("podnet trace follows the packet across nodes", result.trace_cross_node),
        (
            "round robin reached every endpoint",
            len(result.round_robin) == 3 and "FAILED" not in result.round_robin,
        ),
        ("the kernels' trace agrees with podnet trace via the ClusterIP", result.trace_cluster_ip),
        (
            "ClientIP affinity stuck to one pod",
            len(result.affinity) == 1 and "FAILED" not in result.affinity,
        ),
        (
            "the replacement pod has a new IP",
            bool(result.replacement_pod[1]) and result.replacement_pod[1] != result.killed_pod[1],
        ),
        (
            "the endpoints followed the replacement",
            result.replacement_pod[1] in result.endpoints_after
            and result.killed_pod[1] not in result.endpoints_after,
        ),
        ("the Service kept answering", result.survival_failures == 0),
    ]
    table = Table(title="What the story showed")
    table.add_column("claim")
    table.add_column("held")
    for claim, ok in claims:
        table.add_row(claim, "[green]yes[/green]" if ok else "[red]no[/red]")
    for mode, outcome in result.modes.items():
        table.add_row(f"proxy mode {mode}", outcome)
    console.print(table)
    return all(ok for _, ok in claims)


def run_demo(options: DemoOptions, console: Console) -> int:
    story = Story(options, console)
    try:
        story.run()
    except StepFailed as exc:
        console.print(f"[red]The demo stopped:[/red] {exc}")
        story.tear_down()
        return 1
    except KeyboardInterrupt:
        console.print("[yellow]Interrupted: tearing the lab down[/yellow]")
        story.o.keep = False
        story.tear_down()
        return 130
    ok = summarize(story.result, console)
    story.tear_down()
    return 0 if ok else 1
