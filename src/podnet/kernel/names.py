"""Kernel object names derived from cluster keys (DESIGN.md contract 6).

A user string is never a kernel name: names are `prefix + base32(sha256(key))[:n]`, cut so
interfaces stay within IFNAMSIZ-1 (15) and iptables chains within 28 characters. Every prefix
podnet uses lives here, so cleanup can recognise what is ours.
"""

from __future__ import annotations

import base64
import hashlib

IFNAME_MAX = 15
CHAIN_MAX = 28


def hashed(key: str, length: int) -> str:
    digest = hashlib.sha256(key.encode()).digest()
    # base32 turns each 5 bytes into 8 characters on their own: encode only the groups the
    # name uses (Python's b32encode is slow; kube-proxy names 90k chains at 10k Services)
    return base64.b32encode(digest[: 5 * -(-length // 8)]).decode()[:length]


def ifname(prefix: str, key: str) -> str:
    """An interface name: lower-case prefix + hash, at most 15 characters."""
    n = IFNAME_MAX - len(prefix)
    if n < 4:
        raise ValueError(f"interface prefix {prefix!r} leaves fewer than 4 hash characters")
    return prefix + hashed(key, n).lower()


def chain(prefix: str, key: str, length: int = 16) -> str:
    name = prefix + hashed(key, length)
    if len(name) > CHAIN_MAX:
        raise ValueError(f"chain name {name!r} is longer than {CHAIN_MAX} characters")
    return name


# prefixes of kernel objects the lab and the CNI plugin create (recognised by cleanup)
LAB_BRIDGE_PREFIX = "pnb"  # host underlay bridge of a lab: pnb + hash(lab)
LAB_NODE_VETH_PREFIX = "pnv"  # host end of a lab node's or etcd member's eth0: pnv + hash(lab/name)
POD_VETH_PREFIX = "veth"  # host end of a pod's eth0: veth + 8 random hex (upstream bridge)
CNI_MASQ_CHAIN_PREFIX = "CNI-"  # per-container ip masquerade chain: CNI- + hash(net/id)
