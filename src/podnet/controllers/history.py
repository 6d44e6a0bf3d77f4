"""Revision history for DaemonSets and StatefulSets: one ControllerRevision per pod template.

What belongs here: the pure `plan_history` (which revision is current, what to create, bump or
delete) and `template_patch` (a revision's `data`), shared by the DaemonSet and StatefulSet
controllers — upstream's `controller_history.go` and the two controllers' `history` code.

Semantics (upstream's, which `kubectl rollout history|undo` relies on):
- A revision is named `<owner>-<hash>` (hash: `deployment.pod_template_hash` of the template and
  `status.collisionCount`), labelled with the template's labels plus
  `controller-revision-hash: <hash>`, carries the owner's annotations (so `kubernetes.io/
  change-cause` shows in `rollout history`), a controller reference, `revision` (1, 2, ...) and
  `data` = `{"spec": {"template": {..., "$patch": "replace"}}}` — exactly the strategic merge
  patch `kubectl rollout undo` sends back to the owner.
- The current revision is the one whose data equals the owner's template patch. None → a new
  one with revision max+1; one with a lower number than the newest (an undo) → its revision is
  bumped to max+1. A name already taken by other data is a hash collision: the owner's
  `status.collisionCount` goes up and the next sync tries again.
- Revisions that are not current and that no live pod still runs (`controller-revision-hash`
  of the pods: the hash for DaemonSets, the revision's name for StatefulSets) are deleted
  beyond `spec.revisionHistoryLimit` (default 10), oldest first.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from podnet.api.interface import Obj
from podnet.controllers.deployment import pod_template_hash
from podnet.controllers.objects import (
    annotations_of,
    controller_ref,
    is_deleting,
    labels_of,
    make_owner_reference,
    name_of,
    namespace_of,
    uid_of,
)
from podnet.controllers.writes import Write

REVISION_HASH = "controller-revision-hash"


def template_of(owner: Obj) -> Obj:
    template = (owner.get("spec") or {}).get("template")
    return template if isinstance(template, dict) else {}


def template_patch(owner: Obj) -> Obj:
    """A revision's `data`: the patch that puts this template back (upstream getPatch)."""
    return {"spec": {"template": {**copy.deepcopy(template_of(owner)), "$patch": "replace"}}}


def template_hash(owner: Obj) -> str:
    return pod_template_hash(template_of(owner), (owner.get("status") or {}).get("collisionCount"))


def revision_number(revision: Obj) -> int:
    value = revision.get("revision")
    return value if isinstance(value, int) else 0


@dataclass(slots=True)
class History:
    current: Obj | None  # None only when a hash collision has to be resolved first
    writes: list[Write] = field(default_factory=list)
    collision: bool = False


def plan_history(owner: Obj, kind: str, revisions: list[Obj], live_hashes: set[str]) -> History:
    owned = sorted(
        (r for r in revisions if (controller_ref(r) or {}).get("uid") == uid_of(owner)),
        key=lambda r: (revision_number(r), name_of(r)),
    )
    data = template_patch(owner)
    newest = max((revision_number(r) for r in owned), default=0)
    history = History(current=None)
    current = next((r for r in owned if r.get("data") == data and not is_deleting(r)), None)
    if current is None:
        hash_value = template_hash(owner)
        name = f"{name_of(owner)}-{hash_value}"
        if any(name_of(r) == name for r in revisions):
            history.collision = True
            return history
        current = {
            "apiVersion": "apps/v1",
            "kind": "ControllerRevision",
            "metadata": {
                "name": name,
                "namespace": namespace_of(owner),
                "labels": {**labels_of(template_of(owner)), REVISION_HASH: hash_value},
                "annotations": annotations_of(owner),
                "ownerReferences": [make_owner_reference(owner, "apps/v1", kind)],
            },
            "data": data,
            "revision": newest + 1,
        }
        history.writes.append(Write("create", "controllerrevisions", current))
    elif revision_number(current) < newest:
        current = {**copy.deepcopy(current), "revision": newest + 1}
        history.writes.append(Write("update", "controllerrevisions", current))
    history.current = current
    limit = (owner.get("spec") or {}).get("revisionHistoryLimit")
    limit = 10 if not isinstance(limit, int) else limit
    old = [
        r
        for r in owned
        if name_of(r) != name_of(current)
        and labels_of(r).get(REVISION_HASH) not in live_hashes
        and name_of(r) not in live_hashes  # StatefulSet pods carry the revision's name
        and not is_deleting(r)
    ]
    history.writes.extend(
        Write("delete", "controllerrevisions", r) for r in old[: max(len(old) - limit, 0)]
    )
    return history


def revision_hash(revision: Obj) -> str:
    return labels_of(revision).get(REVISION_HASH, "")
