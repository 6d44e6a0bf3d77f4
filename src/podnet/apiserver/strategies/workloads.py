"""Kinds that run pods from a template (`spec.template`): Deployments, ReplicaSets, DaemonSets,
StatefulSets.

What belongs here: `PodTemplateStrategy`, the shared part (status starts empty, the template's
pod spec gets the pod warnings), and one small subclass per kind. A new workload kind
(DaemonSet, StatefulSet, Job, ...) subclasses `PodTemplateStrategy`, here or in its own file,
and sets `scale` when it has a `scale` subresource.
"""

from __future__ import annotations

from podnet.api.interface import Obj
from podnet.apiserver.strategies.base import Context, ScaleSpec, Strategy
from podnet.apiserver.strategies.pods import pod_spec_warnings


class PodTemplateStrategy(Strategy):
    template_path: tuple[str, ...] = ("spec", "template", "spec")
    """Where the pod spec is (a CronJob's is `spec.jobTemplate.spec.template.spec`)."""

    def warnings_on_create(self, ctx: Context, obj: Obj) -> list[str]:
        return template_warnings(obj, self.template_path)

    def warnings_on_update(self, ctx: Context, new: Obj, old: Obj) -> list[str]:
        return template_warnings(new, self.template_path)


class DeploymentStrategy(PodTemplateStrategy):
    scale = ScaleSpec()


class ReplicaSetStrategy(PodTemplateStrategy):
    scale = ScaleSpec()


class ReplicationControllerStrategy(PodTemplateStrategy):
    scale = ScaleSpec()

    def prepare_for_create(self, ctx: Context, obj: Obj) -> None:
        super().prepare_for_create(ctx, obj)
        obj["status"] = {"replicas": 0}  # Go serializes it at zero


class StatefulSetStrategy(PodTemplateStrategy):
    scale = ScaleSpec()

    def prepare_for_create(self, ctx: Context, obj: Obj) -> None:
        super().prepare_for_create(ctx, obj)
        obj["status"] = {"replicas": 0, "availableReplicas": 0}  # Go serializes them at zero


class DaemonSetStrategy(PodTemplateStrategy):
    def prepare_for_create(self, ctx: Context, obj: Obj) -> None:
        super().prepare_for_create(ctx, obj)
        # Go serializes these four even when zero; typed clients require them
        obj["status"] = {
            "currentNumberScheduled": 0,
            "numberMisscheduled": 0,
            "desiredNumberScheduled": 0,
            "numberReady": 0,
        }


def template_warnings(obj: Obj, path: tuple[str, ...] = ("spec", "template", "spec")) -> list[str]:
    """The pod warnings for the pod spec at `path` (`spec.template.spec` by default)."""
    spec: object = obj
    for part in path:
        spec = spec.get(part) if isinstance(spec, dict) else None
    return pod_spec_warnings(spec, ".".join(path)) if isinstance(spec, dict) else []
