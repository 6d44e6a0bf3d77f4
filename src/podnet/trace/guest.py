"""A VM node's kernel state for a trace, read inside its guest.

A VM node (`podnet up --vm-nodes`) has its own kernel: its root namespace and its pods'
namespaces exist only in the guest. The host asks the guest over the node's control port
(`podnet.lab.vm.VmControl`, as `podnet fault` does) to run `python -m podnet.trace.guest
REQUEST`; the guest sees the host's root filesystem, so it runs this same module, which reads
every namespace with the same `snapshot.read_namespace` the host uses for namespace nodes
(links, addresses, routes, neighbours, fdb, sockets; iptables-save, the nft ruleset, `-m
recent`, tunnel flows; the IPVS table and ipsets where the guest's kernel has IP_VS) and
prints them as one JSON object.

What belongs here: `read_guest` (the host's side: one request per VM node, answering the
states keyed as the snapshot keys them) and `main` (the guest's side).

Invariants: only reads, on both sides. The guest's root namespace comes back under the node's
netns name (`NodeLayout.netns`), its pods' under their sandbox names; a pod namespace that
vanished while it was read is left out, as on the host.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from podnet.trace.snapshot import (
    READ_ERRORS,
    NamespaceState,
    NodeLayout,
    read_namespace,
    read_pod,
    state_from_dict,
    state_to_dict,
)

GUEST_TIMEOUT = 60.0  # seconds: python's start under emulation, then every namespace read


class GuestError(Exception):
    """The guest could not be asked, or could not read its state; the message says which."""


def read_guest(
    state_dir: str, node: NodeLayout, pods: list[str], rules: bool
) -> dict[str, NamespaceState]:
    """The namespaces of VM node `node` (its root one, with its rules unless `rules` is
    False, and those of `pods`), read inside its guest."""
    from podnet.lab.vm import VmControl, VmError

    request = json.dumps({"pods": pods, "rules": rules})
    try:
        done = VmControl.at(state_dir, node.name).run(
            [sys.executable, "-m", "podnet.trace.guest", request], timeout=GUEST_TIMEOUT
        )
    except VmError as exc:
        raise GuestError(f"reading VM node {node.name}: {exc}") from exc
    except OSError as exc:  # its files are gone: not this lab's VM any more
        raise GuestError(
            f"reading VM node {node.name}: no control port under {state_dir}/vms "
            f"({exc.strerror}); is the lab up?"
        ) from exc
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        raise GuestError(
            f"reading VM node {node.name} inside its guest failed: "
            f"{lines[-1] if lines else f'exit {done.returncode}'}"
        )
    try:
        raw = json.loads(done.stdout)
        states = {name: state_from_dict(state) for name, state in raw.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise GuestError(f"VM node {node.name} answered something unreadable: {exc}") from exc
    if "" not in states:
        raise GuestError(f"VM node {node.name} did not send its root namespace")
    states[node.netns] = states.pop("")
    return states


def _read(request: dict[str, Any]) -> dict[str, Any]:
    rules = bool(request.get("rules", True))
    out = {"": state_to_dict(read_namespace(None, rules, rules))}
    for name in request.get("pods") or []:
        state = read_pod(str(name), listing=rules)
        if state is not None:
            out[str(name)] = state_to_dict(state)
    return out


def main(argv: list[str]) -> int:
    """In the guest: read what REQUEST (JSON: {"pods": [...], "rules": bool}) asks, print it."""
    if len(argv) != 1:
        print("usage: python -m podnet.trace.guest REQUEST", file=sys.stderr)
        return 2
    try:
        request = json.loads(argv[0])
        if not isinstance(request, dict):
            raise ValueError("the request is a JSON object")
    except ValueError as exc:
        print(f"bad request: {exc}", file=sys.stderr)
        return 2
    try:
        states = _read(request)
    except (*READ_ERRORS, OSError) as exc:
        print(f"cannot read this node's state: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(json.dumps(states, separators=(",", ":")) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
