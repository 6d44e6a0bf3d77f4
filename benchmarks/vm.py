"""VM node benchmark (not a test): how long a node that boots its own kernel takes to be Ready,
and ipvs mode at scale in that kernel.

Run as root from the repo:
    .venv/bin/python benchmarks/vm.py [--rounds 2] [--ipvs-services 10000] [--seconds 16]

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
   ipsets, addresses, `ipvsadm -R`, iptables), next to the bare `ipvsadm -R` of the same
   table into an empty namespace; the partial sync after one endpoint change (as the
   agent runs it); where each sync's time went (seconds per kernel call; `python` is
   podnet's own rendering and planning); and the connection rate (new TCP connection +
   HTTP GET each) to the first vs the last Service, interleaved in one client (`PAIRED`:
   under emulation the guest's speed drifts by tens of percent from one second to the next,
   which separate runs per Service would measure instead). The earlier VM nodes are frozen
   (`podnet fault stop node`) meanwhile. The guest runs this file with
   `--guest-ipvs N` through the VM's control port; `--ipvs-services 500,1000,2000` runs
   several scales in the same VM, one after the other.
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
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from podnet.lab import faults
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


class _Phases:
    """Wraps one kernel door of the proxier (ipset, ipvs, iptables, addresses) and adds the
    seconds each of its calls takes to `spent["<door>.<method>"]`: where a sync's time goes."""

    def __init__(self, door: object, name: str, spent: dict[str, float]) -> None:
        self._door, self._name, self._spent = door, name, spent

    def __getattr__(self, attr: str) -> Any:
        value = getattr(self._door, attr)
        if not callable(value):
            return value

        def timed_call(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return value(*args, **kwargs)
            finally:
                key = f"{self._name}.{attr}"
                self._spent[key] = self._spent.get(key, 0.0) + time.perf_counter() - start

        return timed_call


def _phases_of(proxier: Any, kernel: Any, step: Any) -> dict[str, float]:
    """Run `step` with the kernel's doors timed; the seconds per call, and the rest (render,
    planning: podnet's own Python) as `python`."""
    spent: dict[str, float] = {}
    doors = {name: getattr(kernel, name) for name in ("ipset", "ipvs", "iptables", "addresses")}
    for name, door in doors.items():
        setattr(kernel, name, _Phases(door, name, spent))
    try:
        start = time.perf_counter()
        step()
        total = time.perf_counter() - start
    finally:
        for name, door in doors.items():
            setattr(kernel, name, door)
    spent = {key: round(value, 2) for key, value in sorted(spent.items())}
    spent["python"] = round(total - sum(spent.values()), 2)
    spent["total"] = round(total, 2)
    return spent


# new connections (HTTP GET each) to the first and the last Service, one after the other in
# one client process (the order swapped every round); each target's rate is its connections
# over the time they took, so a slower stretch of the emulated CPU hits both alike
PAIRED = r"""
import socket, sys, time
seconds, addrs = float(sys.argv[1]), [(a.rsplit(":", 1)[0], int(a.rsplit(":", 1)[1]))
                                      for a in sys.argv[2:]]
spent, done = [0.0] * len(addrs), [0] * len(addrs)
deadline, flip = time.monotonic() + seconds, 0
while time.monotonic() < deadline:
    for i in (range(len(addrs)) if flip == 0 else reversed(range(len(addrs)))):
        start = time.perf_counter()
        with socket.create_connection(addrs[i], timeout=5) as s:
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            while s.recv(65536):
                pass
        spent[i] += time.perf_counter() - start
        done[i] += 1
    flip ^= 1
print(" ".join(str(d / t) for d, t in zip(done, spent)))
"""


def paired_rates(client_ns: str, targets: list[str], seconds: float) -> list[float]:
    """Connections/s to each of `targets` ("ip:port"), measured interleaved (`PAIRED`)."""
    from podnet.kernel import netns

    argv = [sys.executable, "-c", PAIRED, str(seconds), *targets]
    done = netns.call_in(
        client_ns,
        lambda: subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 120),
    )
    if done.returncode != 0:
        raise RuntimeError(f"the paired client failed against {targets}: {done.stderr[-2000:]}")
    return [float(word) for word in done.stdout.split()]


def guest_ipvs(n: int, seconds: float) -> dict[str, Any]:
    """Step 3, run inside a VM node's guest (the caller prints it as JSON)."""
    from proxy import CFG, build_state, cluster_ip, fresh_namespace, timed

    from podnet.agent.proxy.ipvs import plan_ipvsadm, render_ipvs
    from podnet.agent.proxy.modes import IpvsProxier, ProxyKernel
    from podnet.kernel import netns
    from podnet.kernel.ipvs import IpvsRunner
    from podnet.kernel.links import Netlink
    from podnet.testing.proxy import endpoint_slice
    from podnet.testing.proxy_lab import HTTP_PORT, topology

    started = time.perf_counter()
    state = build_state(n)
    built = time.perf_counter() - started
    with topology() as topo:
        kernel = ProxyKernel.in_namespace(topo.node)  # the agent's own runners and timeouts
        proxier = IpvsProxier(CFG, kernel)
        try:
            phases = _phases_of(proxier, kernel, lambda: proxier.sync_now(state, None))
            full = phases["total"]
            rendered = render_ipvs(state.service_port_map(), state.endpoints_map(), CFG)
            script = plan_ipvsadm((), rendered.virtual_servers, lambda vs: True)
            empty = fresh_namespace("ipvs")
            try:
                with Netlink(empty) as nl:  # IPVS takes no real server while lo is down
                    nl.set_up("lo")
                bare = timed(lambda: IpvsRunner(empty).restore(script))
            finally:
                netns.delete(empty)
            changes = []
            for k in range(2):  # one endpoint of a middle service moves
                eps = [f"10.250.0.{k + 1}", "10.250.1.1", "10.250.1.2"]
                state.on_slice(
                    endpoint_slice("bench", f"svc{n // 2}", eps, port=HTTP_PORT,
                                   port_name="http", node="test-node")
                )  # fmt: skip
                changed = state.apply().updated_services  # a partial sync, as the agent's
                change = _phases_of(proxier, kernel, lambda c=changed: proxier.sync_now(state, c))
                changes.append(change["total"])
            targets = [f"{cluster_ip(state, i)}:80" for i in (0, n - 1)]
            first, last = paired_rates(topo.client, targets, 2 * seconds)
        finally:
            proxier.cleanup_now()
    return {
        "services": n,
        "build_state_s": round(built, 2),
        "full_sync_s": full,
        "full_sync_phases": phases,
        "one_change_phases": change,
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
        raise RuntimeError(f"ipvs benchmark in {node}'s guest failed:\n{done.stderr[:3000]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--ipvs-services", default="10000", help="step 3's services, or several: 500,1000 (0: none)"
    )
    parser.add_argument("--seconds", type=float, default=16.0, help="first-vs-last, each side")
    parser.add_argument("--guest-ipvs", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.guest_ipvs:  # inside a VM node's guest: step 3 only
        print(json.dumps(guest_ipvs(args.guest_ipvs, args.seconds)))
        return 0
    name = f"bvm{secrets.token_hex(2)}"
    lab = Lab.up(LabSpec(name=name, nodes=1, dns=False), merge_kubeconfig=False)
    rounds = []
    scales = [int(n) for n in args.ipvs_services.split(",") if int(n) > 0]
    ipvs: list[dict[str, Any]] = []
    try:
        for _ in range(max(1, args.rounds)):
            rounds.append(one_round(lab))
        # the earlier VM nodes are frozen meanwhile: an idle emulated guest still takes most
        # of a core, which the measured one would lack (this machine has two)
        frozen = [faults.inject(lab, faults.Request("stop", f"node {r['node']}")).id
                  for r in rounds[:-1] if scales]  # fmt: skip
        try:
            for n in scales:
                ipvs.append(ipvs_at_scale(lab, rounds[-1]["node"], n, args.seconds))
                print(json.dumps(ipvs[-1]), flush=True)
        finally:
            faults.clear_ids(lab, frozen)
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
    for r in ipvs:
        print(f"\nipvs mode in the VM node's kernel ({rounds[0]['accel']}), "
              f"{r['services']} services x 3 endpoints")  # fmt: skip
        print(f"{'full sync':<38} {r['full_sync_s']:>9.2f} s")
        print(
            f"{'  of it, per kernel call':<38} "
            + ", ".join(f"{k} {v}" for k, v in r["full_sync_phases"].items() if k != "total")
        )
        print(f"{'bare ipvsadm -R of the same table':<38} {r['bare_ipvsadm_restore_s']:>9.2f} s"
              f"   (ratio {r['full_sync_s'] / r['bare_ipvsadm_restore_s']:.2f})")  # fmt: skip
        print(f"{'sync after one endpoint change':<38} {r['one_change_s']:>9.2f} s")
        print(
            f"{'  of it, per kernel call':<38} "
            + ", ".join(f"{k} {v}" for k, v in r["one_change_phases"].items() if k != "total")
        )
        print(f"{'connections/s to the first Service':<38} {r['first_per_s']:>9.1f}")
        print(f"{'connections/s to the last Service':<38} {r['last_per_s']:>9.1f}"
              f"   (last/first {r['last_over_first']:.2f}, target >= 0.95)")  # fmt: skip
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps({"rounds": rounds, "median_to_ready_s": median, "ipvs": ipvs}, indent=2)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
