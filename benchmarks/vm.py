"""VM node benchmark (not a test): how long a node that boots its own kernel takes to be Ready,
and ipvs mode at scale in that kernel.

Run as root from the repo:
    .venv/bin/python benchmarks/vm.py [--rounds 2] [--ipvs-services 10000] [--seconds 8]

1. `podnet up` of a one-node lab (a namespace node, no cluster DNS).
2. `--rounds` times: `Lab.add_node(vm_node=True)` (one more VM node: qemu boots Debian's
   kernel, the guest's supervisor starts the agent, the Node registers and turns Ready),
   timed from the call to the Ready Node, and split with the logs: qemu's start (the lab
   supervisor's log) -> the agent's first log line (boot + the agent's Python imports under
   emulation) -> the agent starting its components -> Ready.
3. ipvs mode at `--ipvs-services` (0: skipped), inside the last VM node's guest (its own
   kernel has IP_VS; this one has not): on the proxy benchmark's hand-built node
   (`podnet.testing.proxy_lab`, namespaces in the guest, three httpd endpoints, a client on
   its own subnet) and its services (`benchmarks/proxy.py` `build_state`: N services x 3
   endpoints, the first and last with the real pods): the proxier's full sync (render,
   ipsets, `ipvsadm -R`, iptables), next to the bare `ipvsadm -R` of the same table into an
   empty namespace; one endpoint change (ipvs re-syncs everything, as upstream); and the
   connection rate (new TCP connection + HTTP GET each) to the first vs the last Service.
   The guest runs this file with `--guest-ipvs N` through the VM's control port.
4. `podnet down` always.

The accelerator is what `podnet up` chose (KVM when a probe guest boots under it, else TCG);
the table says which. Prints a table and writes benchmarks/results/vm.json.
"""

from __future__ import annotations

import argparse
import json
import re
import secrets
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from podnet.lab.lab import Lab, down_lab
from podnet.lab.spec import LabSpec
from podnet.lab.vm import VmControl

RESULTS = Path(__file__).parent / "results" / "vm.json"
_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def _stamp(line: str) -> float | None:
    match = _STAMP.match(line)
    if match is None:
        return None
    return datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()


def _first(path: Path, needle: str) -> float | None:
    """The timestamp of the first log line of `path` containing `needle`."""
    for line in path.read_text(errors="replace").splitlines():
        if needle in line and (when := _stamp(line)) is not None:
            return when
    return None


def one_round(lab: Lab) -> dict[str, Any]:
    started = time.time()
    node = lab.add_node(vm_node=True, timeout=600)
    ready = time.time()
    qemu = _first(lab.state_dir / "supervisor.log", f"started agent-{node.name} ")
    agent_log = Path(node.log)
    first_line = _first(agent_log, " podnet.agent: ")
    components = _first(agent_log, "starting: kubelet")
    return {
        "node": node.name,
        "accel": lab.plan.vm_accel,
        "to_ready_s": round(ready - started, 1),
        "qemu_to_agent_log_s": round(first_line - qemu, 1) if qemu and first_line else None,
        "agent_log_to_components_s": (
            round(components - first_line, 1) if components and first_line else None
        ),
        "components_to_ready_s": round(ready - components, 1) if components else None,
    }


def guest_ipvs(n: int, seconds: float) -> dict[str, Any]:
    """Step 3, run inside a VM node's guest (the caller prints it as JSON)."""
    from proxy import CFG, build_state, first_vs_last, fresh_namespace, timed

    from podnet.agent.proxy.ipvs import plan_ipvsadm, render_ipvs
    from podnet.agent.proxy.modes import IpvsProxier, ProxyKernel
    from podnet.kernel import netns
    from podnet.kernel.ipvs import IpsetRunner, IpvsRunner
    from podnet.testing.proxy import endpoint_slice
    from podnet.testing.proxy_lab import HTTP_PORT, topology

    state = build_state(n)
    with topology() as topo:
        kernel = ProxyKernel.in_namespace(topo.node)
        # under emulation a 10k-service ipset / ipvsadm load outlasts the tools' 30 s limit
        kernel.ipset = IpsetRunner(topo.node, timeout=3600)
        kernel.ipvs = IpvsRunner(topo.node, timeout=3600)
        proxier = IpvsProxier(CFG, kernel)
        try:
            full = timed(lambda: proxier.sync_now(state, None))
            rendered = render_ipvs(state.service_port_map(), state.endpoints_map(), CFG)
            script = plan_ipvsadm((), rendered.virtual_servers, lambda vs: True)
            empty = fresh_namespace("ipvs")
            try:
                bare = timed(lambda: IpvsRunner(empty, timeout=3600).restore(script))
            finally:
                netns.delete(empty)
            changes = []
            for k in range(2):  # one endpoint of a middle service moves
                eps = [f"10.250.0.{k + 1}", "10.250.1.1", "10.250.1.2"]
                state.on_slice(
                    endpoint_slice("bench", f"svc{n // 2}", eps, port=HTTP_PORT,
                                   port_name="http", node="test-node")
                )  # fmt: skip
                state.apply()
                changes.append(timed(lambda: proxier.sync_now(state, None)))
            first, last = first_vs_last(topo, state, n, seconds)
        finally:
            proxier.cleanup_now()
    return {
        "services": n,
        "full_sync_s": full,
        "bare_ipvsadm_restore_s": bare,
        "ipvsadm_lines": script.count("\n"),
        "one_change_s": sorted(changes)[len(changes) // 2],
        "first_per_s": first,
        "last_per_s": last,
        "last_over_first": last / first,
    }


def ipvs_at_scale(lab: Lab, node: str, n: int, seconds: float) -> dict[str, Any]:
    """Step 3: this file, run in `node`'s guest; its result."""
    argv = [sys.executable, str(Path(__file__).resolve()), "--guest-ipvs", str(n),
            "--seconds", str(seconds)]  # fmt: skip
    done = VmControl(lab.plan, node).run(argv, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"ipvs benchmark in {node}'s guest failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--ipvs-services", type=int, default=10000)
    parser.add_argument("--seconds", type=float, default=8.0, help="first-vs-last, in all")
    parser.add_argument("--guest-ipvs", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.guest_ipvs:  # inside a VM node's guest: step 3 only
        print(json.dumps(guest_ipvs(args.guest_ipvs, args.seconds)))
        return 0
    name = f"bvm{secrets.token_hex(2)}"
    lab = Lab.up(LabSpec(name=name, nodes=1, dns=False), merge_kubeconfig=False)
    rounds = []
    ipvs: dict[str, Any] | None = None
    try:
        for _ in range(max(1, args.rounds)):
            rounds.append(one_round(lab))
        if args.ipvs_services:
            ipvs = ipvs_at_scale(lab, rounds[-1]["node"], args.ipvs_services, args.seconds)
    finally:
        down_lab(name)
    print(f"VM node boot to Ready ({rounds[0]['accel'] if rounds else '?'}), {len(rounds)} rounds")
    print(f"{'node':<7} {'to Ready':>9} {'qemu->agent':>12} {'->components':>13} {'->Ready':>8}")
    for r in rounds:
        print(
            f"{r['node']:<7} {r['to_ready_s']:>8}s {r['qemu_to_agent_log_s']!s:>11}s "
            f"{r['agent_log_to_components_s']!s:>12}s {r['components_to_ready_s']!s:>7}s"
        )
    median = statistics.median(r["to_ready_s"] for r in rounds)
    print(f"median boot to Ready: {median:.1f} s")
    if ipvs is not None:
        print(f"\nipvs mode in the VM node's kernel ({rounds[0]['accel']}), "
              f"{ipvs['services']} services x 3 endpoints")  # fmt: skip
        print(f"{'full sync':<38} {ipvs['full_sync_s']:>9.2f} s")
        print(f"{'bare ipvsadm -R of the same table':<38} {ipvs['bare_ipvsadm_restore_s']:>9.2f} s"
              f"   (ratio {ipvs['full_sync_s'] / ipvs['bare_ipvsadm_restore_s']:.2f})")  # fmt: skip
        print(f"{'sync after one endpoint change':<38} {ipvs['one_change_s']:>9.2f} s")
        print(f"{'connections/s to the first Service':<38} {ipvs['first_per_s']:>9.1f}")
        print(f"{'connections/s to the last Service':<38} {ipvs['last_per_s']:>9.1f}"
              f"   (last/first {ipvs['last_over_first']:.2f}, target >= 0.95)")  # fmt: skip
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps({"rounds": rounds, "median_to_ready_s": median, "ipvs": ipvs}, indent=2)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
