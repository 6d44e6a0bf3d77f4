"""Per-kind strategies: what is special about each kind, kept out of the generic registry.

What belongs here: one `Strategy` subclass per kind that needs one (upstream's
`pkg/registry/<group>/<kind>/strategy.go`), and `STRATEGIES`, the one explicit dict from
resource plural to strategy. A kind missing from it gets `DEFAULT_STRATEGY` (plain
`Strategy`), which is right for every kind without side effects or kind-specific status
(ConfigMaps, Secrets, Events, Leases, EndpointSlices, ...; with a status subresource, status
starts empty and is written only through `/status`).

The registry (`apiserver.registry`) does everything generic — identity checks,
fieldValidation, names and generateName, uid/creationTimestamp/generation, defaulting
(`api.defaults`), namespace existence, compare-and-swap, finalizers, watch, list — and calls
the strategy's hooks at these points:

  create   defaults → prepare_for_create → admit_create → validate → warnings_on_create →
           (namespace must exist; dry run stops here) → begin_create → store create →
           finish(ok) → after_create
  update   server metadata restored → defaults → prepare_for_update → generation bumped if
           anything but metadata/status changed → validate_update → (no change: stop) →
           warnings_on_update → (dry run stops here) → begin_update → store update →
           finish(ok); when the update leaves the object ready_to_remove (its last finalizer
           dropped): store delete → finish(ok) → after_removal
  /status  prepare_for_status_update → validate_update → then as update, from begin_update
  /finalize  as update, with prepare_for_finalize in place of prepare_for_update (namespaces)
  delete   check_delete → grace_period → deletionTimestamp recorded → prepare_for_delete →
           ready_to_remove? store delete → after_removal : store update → after_deletion_recorded
  scale    `Strategy.scale` (a `ScaleSpec`) names the replicas and selector fields; the registry
           serves `autoscaling/v1` Scale from them for every kind that sets it.

`begin_*` and `after_*` hooks may use the registry through `Context.backend` (`Backend`);
nothing else in a strategy does I/O. The per-kind rules a hook delegates to live where every
component can use them: defaults in `api/defaults.py`, validation in `api/validation.py`,
table columns in `api/tables.py`.

Adding a kind: see "Adding a resource kind" in docs/design.md.
"""

from __future__ import annotations

from podnet.api.resources import Resource
from podnet.apiserver.strategies.base import (
    Backend,
    Context,
    Finish,
    Hooks,
    ScaleSpec,
    Strategy,
    finish_nothing,
)
from podnet.apiserver.strategies.batch import CronJobStrategy, JobStrategy
from podnet.apiserver.strategies.initial_status import InitialStatusStrategy
from podnet.apiserver.strategies.namespaces import NamespaceStrategy
from podnet.apiserver.strategies.nodes import NodeStrategy
from podnet.apiserver.strategies.pods import PodStrategy
from podnet.apiserver.strategies.services import ServiceStrategy
from podnet.apiserver.strategies.workloads import (
    DaemonSetStrategy,
    DeploymentStrategy,
    ReplicaSetStrategy,
    ReplicationControllerStrategy,
    StatefulSetStrategy,
)

STRATEGIES: dict[str, Strategy] = {
    "namespaces": NamespaceStrategy(),
    "pods": PodStrategy(),
    "services": ServiceStrategy(),
    "nodes": NodeStrategy(),
    "deployments": DeploymentStrategy(),
    "replicasets": ReplicaSetStrategy(),
    "persistentvolumeclaims": InitialStatusStrategy({"phase": "Pending"}),
    "poddisruptionbudgets": InitialStatusStrategy(
        {"disruptionsAllowed": 0, "currentHealthy": 0, "desiredHealthy": 0, "expectedPods": 0}
    ),
    "horizontalpodautoscalers": InitialStatusStrategy({"desiredReplicas": 0}),
    "ingresses": InitialStatusStrategy({"loadBalancer": {}}),
    "jobs": JobStrategy(),
    "daemonsets": DaemonSetStrategy(),
    "statefulsets": StatefulSetStrategy(),
    "replicationcontrollers": ReplicationControllerStrategy(),
    "cronjobs": CronJobStrategy(),
}
DEFAULT_STRATEGY = Strategy()


def strategy_for(res: Resource) -> Strategy:
    """The strategy of `res` (`DEFAULT_STRATEGY` for kinds that need nothing special)."""
    return STRATEGIES.get(res.plural, DEFAULT_STRATEGY)


__all__ = [
    "DEFAULT_STRATEGY",
    "STRATEGIES",
    "Backend",
    "Context",
    "Finish",
    "Hooks",
    "ScaleSpec",
    "Strategy",
    "finish_nothing",
    "strategy_for",
]
