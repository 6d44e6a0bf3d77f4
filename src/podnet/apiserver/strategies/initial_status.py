"""Kinds whose only special rule is the status they start with.

What belongs here: `InitialStatusStrategy`, the default strategy plus a starting status. Go's
API types serialize some status fields even when zero (no `omitempty`): a new
PodDisruptionBudget reads back with `disruptionsAllowed: 0` and its three counters, a new
HorizontalPodAutoscaler with `desiredReplicas: 0`, an Ingress with `loadBalancer: {}`. Clients
generated from those types (the official Python client among them) refuse an object whose
required status fields are missing, so podnet starts these kinds with the same zero status a
real API server returns. A PersistentVolumeClaim starts `Pending`, the phase upstream's binder
gives a claim it cannot bind yet; podnet binds none (`controllers/volumes.py` says why).
"""

from __future__ import annotations

import copy

from podnet.api.interface import Obj
from podnet.apiserver.strategies.base import Context, Strategy


class InitialStatusStrategy(Strategy):
    def __init__(self, status: Obj) -> None:
        self.status = status

    def prepare_for_create(self, ctx: Context, obj: Obj) -> None:
        super().prepare_for_create(ctx, obj)
        obj["status"] = copy.deepcopy(self.status)
