"""The claim binder: says, on every PersistentVolumeClaim, why it stays Pending.

What belongs here: the pure `claim_message` (why this claim cannot be bound) and
`PersistentVolumeClaimController`, the loop that puts it in an event — what upstream's
`persistentvolume-controller` does for a claim no volume can satisfy.

podnet has no PersistentVolumes and no provisioner, so no claim is ever bound: every claim
keeps the `Pending` phase it starts with (`apiserver/strategies/initial_status.py`). The event
uses upstream's reasons and messages — `FailedBinding` "no persistent volumes available for
this claim and no storage class is set" for a claim without a class, `ProvisioningFailed`
`storageclass.storage.k8s.io "<class>" not found` for one that names a class — followed by
what to do instead, so `kubectl describe pvc` answers the question a user has. It is recorded
once per claim (by uid) per controller run, not on every resync.
"""

from __future__ import annotations

import logging
from typing import Any

from podnet.api.interface import Obj
from podnet.controllers.controller import Controller
from podnet.controllers.informer import EventType
from podnet.controllers.objects import annotations_of, is_deleting, object_key, uid_of

log = logging.getLogger(__name__)

STORAGE_CLASS_ANNOTATION = "volume.beta.kubernetes.io/storage-class"
ADVICE = (
    "podnet provisions no volumes, so this claim stays Pending; use an emptyDir volume "
    "(StatefulSet volumeClaimTemplates become emptyDir volumes)"
)


def claim_message(claim: Obj) -> tuple[str, str, str]:
    """(event type, reason, message) for a claim podnet cannot bind."""
    storage_class = annotations_of(claim).get(STORAGE_CLASS_ANNOTATION) or (
        claim.get("spec") or {}
    ).get("storageClassName")
    if storage_class:
        return (
            "Warning",
            "ProvisioningFailed",
            f'storageclass.storage.k8s.io "{storage_class}" not found; {ADVICE}',
        )
    return (
        "Normal",
        "FailedBinding",
        f"no persistent volumes available for this claim and no storage class is set; {ADVICE}",
    )


class PersistentVolumeClaimController(Controller):
    name = "persistentvolume-binder"
    component = "persistentvolume-controller"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.claims = self.informers.informer("persistentvolumeclaims")
        self.claims.add_handler(self._on_claim)
        self._told: set[str] = set()

    def all_keys(self) -> list[str]:
        return list(self.claims.keys())

    def _on_claim(self, kind: EventType, old: Obj | None, new: Obj | None) -> None:
        if new is None:
            assert old is not None
            self._told.discard(uid_of(old))
            return
        self.queue.add(object_key(new))

    async def reconcile(self, key: str) -> None:
        claim = self.claims.get(key)
        if claim is None or is_deleting(claim) or uid_of(claim) in self._told:
            return
        if (claim.get("status") or {}).get("phase", "Pending") != "Pending":
            return
        event_type, reason, message = claim_message(claim)
        self.events.record(claim, "PersistentVolumeClaim", "v1", event_type, reason, message)
        self._told.add(uid_of(claim))
