"""Nodes: a kubelet registers its node with the status it observed.

What belongs here: `NodeStrategy` (upstream `pkg/registry/core/node/strategy.go`).

Invariant: unlike other kinds with a status subresource, a new Node keeps the status in the
create body (capacity, addresses, conditions), because the kubelet that creates it is the
status's owner; after that, status changes only through `nodes/<name>/status`.
"""

from __future__ import annotations

from podnet.api.interface import Obj
from podnet.apiserver.strategies.base import Context, Strategy


class NodeStrategy(Strategy):
    def prepare_for_create(self, ctx: Context, obj: Obj) -> None:
        for part in ("spec", "status"):
            if obj.get(part) is None:
                obj[part] = {}
