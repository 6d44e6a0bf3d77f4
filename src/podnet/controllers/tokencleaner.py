"""The token cleaner: deletes bootstrap token Secrets once they expire (upstream's
`tokencleaner` controller in kube-controller-manager).

What belongs here: `TokenCleaner`, a loop over the Secrets of type
`bootstrap.kubernetes.io/token` in kube-system. An expired one (or one whose expiration does
not parse, as upstream) is deleted with its uid as precondition; an unexpired one is looked at
again when it expires; one without an expiration is kept. The cluster-info signature of a
deleted token stays until the next `podnet token` command re-signs it; a join with that token
is refused by the server and says the token has expired or was deleted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from podnet.api.errors import ApiError
from podnet.api.interface import Api, Obj
from podnet.apiserver.auth import bootstrap as bt
from podnet.config import ClusterConfig
from podnet.controllers.controller import Controller, utc_now
from podnet.controllers.informer import EventType, InformerFactory
from podnet.controllers.objects import name_of, object_key, uid_of

log = logging.getLogger(__name__)


def is_token_secret(secret: Obj | None) -> bool:
    return secret is not None and secret.get("type") == bt.SECRET_TYPE


class TokenCleaner(Controller):
    name = "tokencleaner"
    component = "tokencleaner"

    def __init__(
        self,
        api: Api,
        config: ClusterConfig,
        informers: InformerFactory,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        super().__init__(api, config, informers, clock)
        self.secrets = informers.informer("secrets", bt.NAMESPACE)
        self.secrets.add_handler(self._on_secret)

    def all_keys(self) -> list[str]:
        return [object_key(s) for s in self.secrets.items() if is_token_secret(s)]

    def _on_secret(self, kind: EventType, old: Obj | None, new: Obj | None) -> None:
        if is_token_secret(new):
            assert new is not None
            self.queue.add(object_key(new))

    async def reconcile(self, key: str) -> None:
        secret = self.secrets.get(key)
        if not is_token_secret(secret):
            return
        assert secret is not None
        left = bt.seconds_left(bt.secret_fields(secret), self.clock())
        if left is None:
            return
        if left > 0:
            self.queue.add_after(key, left + 0.1)
            return
        try:
            await self.api.delete("secrets", name_of(secret), bt.NAMESPACE, uid=uid_of(secret))
        except ApiError as exc:
            if exc.code not in (404, 409):  # gone already, or replaced by a new one
                raise
        else:
            log.info("tokencleaner: deleted expired bootstrap token %s", name_of(secret))
