"""Jobs and CronJobs (upstream `pkg/registry/batch/job` and `.../cronjob`).

What belongs here: `JobStrategy` — a Job's selector and pod labels are generated at create
from its uid (`generate_selector`), unless the user asked for `manualSelector: true` — and
`CronJobStrategy`, whose pod template sits in `spec.jobTemplate`.

Generated labels (upstream's, new and legacy spellings): the pod template gets
`batch.kubernetes.io/controller-uid` and `controller-uid` = the Job's uid,
`batch.kubernetes.io/job-name` and `job-name` = its name; the selector matches
`batch.kubernetes.io/controller-uid`. A label the user already set is kept (a conflict is
then refused by validation: the selector no longer matches the template). A Job created
without labels of its own carries the template's labels, as upstream's defaulting leaves
it.
"""

from __future__ import annotations

from podnet.api.interface import Obj
from podnet.apiserver.strategies.base import Context
from podnet.apiserver.strategies.workloads import PodTemplateStrategy

CONTROLLER_UID = "batch.kubernetes.io/controller-uid"
JOB_NAME = "batch.kubernetes.io/job-name"
LEGACY_CONTROLLER_UID = "controller-uid"
LEGACY_JOB_NAME = "job-name"


def _dict_at(parent: Obj, key: str) -> Obj:
    value = parent.get(key)
    if value is None:
        value = parent[key] = {}
    return value if isinstance(value, dict) else {}


def generate_selector(job: Obj) -> None:
    """Upstream `generateSelectorIfNeeded` (see the module docstring)."""
    spec = _dict_at(job, "spec")
    if spec.get("manualSelector") is True:
        return
    meta = _dict_at(job, "metadata")
    uid, name = str(meta.get("uid", "")), str(meta.get("name", ""))
    labels = _dict_at(_dict_at(_dict_at(spec, "template"), "metadata"), "labels")
    for key, value in (
        (LEGACY_CONTROLLER_UID, uid),
        (CONTROLLER_UID, uid),
        (LEGACY_JOB_NAME, name),
        (JOB_NAME, name),
    ):
        labels.setdefault(key, value)
    _dict_at(_dict_at(spec, "selector"), "matchLabels").setdefault(CONTROLLER_UID, uid)
    if not meta.get("labels"):
        meta["labels"] = dict(labels)


class JobStrategy(PodTemplateStrategy):
    def prepare_for_create(self, ctx: Context, obj: Obj) -> None:
        super().prepare_for_create(ctx, obj)
        generate_selector(obj)


class CronJobStrategy(PodTemplateStrategy):
    template_path = ("spec", "jobTemplate", "spec", "template", "spec")
