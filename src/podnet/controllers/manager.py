"""The controller manager: runs every control loop of the server over one set of informers.

What belongs here: the registry of controllers (`CONTROLLERS`, by name), `ControllerManager`
(start a chosen subset, wait for caches, stop cleanly) and `run_controllers`, the entry point
the API server calls with its in-process `LocalApi`.

Invariants:
- One `InformerFactory` per manager: each resource is listed and watched once, whatever the
  number of controllers reading it.
- No controller reconciles before every informer has its first full list.
- A controller that crashes is logged and restarted with a jittered back-off (0.5 s doubling
  to 30 s); it never takes the others down. `stop` ends everything: workers, informers, timers.
- With several servers on one store, only the holder of the Lease
  `kube-system/podnet-controller-manager` runs controllers (`leaderelection.py`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection
from datetime import datetime

from podnet import memreport
from podnet.api.interface import Api
from podnet.config import ClusterConfig
from podnet.controllers.controller import Controller, utc_now
from podnet.controllers.cronjob import CronJobController
from podnet.controllers.daemonset import DaemonSetController
from podnet.controllers.deployment import DeploymentController
from podnet.controllers.disruption import DisruptionController
from podnet.controllers.endpoints import EndpointsController
from podnet.controllers.endpointslices import EndpointSliceController
from podnet.controllers.garbagecollector import GarbageCollector
from podnet.controllers.informer import Informer, InformerFactory
from podnet.controllers.job import JobController
from podnet.controllers.leaderelection import LeaderElector
from podnet.controllers.mirroring import EndpointSliceMirroringController
from podnet.controllers.nodeipam import NodeIpamController
from podnet.controllers.nodelifecycle import NodeLifecycleController
from podnet.controllers.replicaset import ReplicaSetController, ReplicationManager
from podnet.controllers.resourcequota import ResourceQuotaController
from podnet.controllers.scheduler import SchedulerController
from podnet.controllers.statefulset import StatefulSetController
from podnet.controllers.tokencleaner import TokenCleaner
from podnet.controllers.volumes import PersistentVolumeClaimController
from podnet.retry import Backoff, Retry, sleep_or_stop

log = logging.getLogger(__name__)

RESTART = Backoff(0.5, 30.0)  # a crashed controller

CONTROLLERS: dict[str, type[Controller]] = {
    "scheduler": SchedulerController,
    "nodeipam": NodeIpamController,
    "endpoints": EndpointsController,
    "endpointslices": EndpointSliceController,
    "endpointslicemirroring": EndpointSliceMirroringController,
    "replicaset": ReplicaSetController,
    "deployment": DeploymentController,
    "garbagecollector": GarbageCollector,
    "nodelifecycle": NodeLifecycleController,
    "disruption": DisruptionController,
    "persistentvolume-binder": PersistentVolumeClaimController,
    "job": JobController,
    "cronjob": CronJobController,
    "daemonset": DaemonSetController,
    "statefulset": StatefulSetController,
    "replicationcontroller": ReplicationManager,
    "resourcequota": ResourceQuotaController,
    "tokencleaner": TokenCleaner,
}


class ControllerManager:
    def __init__(
        self,
        api: Api,
        config: ClusterConfig,
        only: Collection[str] | None = None,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        unknown = set(only or ()) - set(CONTROLLERS)
        if unknown:
            raise ValueError(
                f"unknown controller(s) {sorted(unknown)}; valid: {', '.join(CONTROLLERS)}"
            )
        self.api = api
        self.config = config
        self.informers = InformerFactory(api)
        self.controllers: dict[str, Controller] = {
            name: cls(api, config, self.informers, clock)
            for name, cls in CONTROLLERS.items()
            if only is None or name in only
        }
        memreport.track("informers' objects", self.informers, _informer_items)
        memreport.track("informers' indexes", self.informers, _informer_indexes)
        memreport.track("controllers' own state", self, lambda m: m.controllers)

    async def run(self, stop: asyncio.Event) -> None:
        self.informers.start()
        tasks = [
            asyncio.create_task(self._supervise(c, stop), name=f"controller-{name}")
            for name, c in self.controllers.items()
        ]
        try:
            await stop.wait()
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.informers.stop()

    async def _supervise(self, controller: Controller, stop: asyncio.Event) -> None:
        retry = Retry(RESTART)
        while not stop.is_set():
            try:
                await controller.run(stop)
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                delay = retry.next()
                log.exception("controller %s crashed; restarting in %.1fs", controller.name, delay)
                await sleep_or_stop(stop, delay)


async def _relay(source: asyncio.Event, target: asyncio.Event) -> None:
    await source.wait()
    target.set()


async def run_controllers(
    api: Api,
    config: ClusterConfig,
    stop: asyncio.Event,
    share: Callable[[InformerFactory], Callable[[], None]] | None = None,
) -> None:
    """Run every controller until `stop` is set (the API server's entry point).

    With several servers sharing one store, this waits to become the leader first and stops
    its controllers when leadership is lost (then campaigns again). `share` is called with
    each term's informers before they start (the server's node authorizer follows their pods)
    and returns what to call once they have stopped.
    """
    elector = LeaderElector(api)
    while not stop.is_set():
        if not await elector.acquire(stop):
            return
        lost = asyncio.Event()
        manager = ControllerManager(api, config)
        unshare = share(manager.informers) if share is not None else None
        renew = asyncio.create_task(elector.keep(stop, lost))
        either = asyncio.Event()
        relays = [
            asyncio.create_task(_relay(stop, either)),
            asyncio.create_task(_relay(lost, either)),
        ]
        try:
            await manager.run(either)
        finally:
            for t in (renew, *relays):
                t.cancel()
            await asyncio.gather(renew, *relays, return_exceptions=True)
            if unshare is not None:
                unshare()
        if lost.is_set() and not stop.is_set():
            log.warning("controllers: lost the leader lease; standing by")
    await elector.release()


def _informer_items(factory: InformerFactory) -> list[object]:
    return [inf._items for inf in _informers(factory)]


def _informer_indexes(factory: InformerFactory) -> list[object]:
    return [(inf._by_namespace, inf._by_label, inf._by_controller) for inf in _informers(factory)]


def _informers(factory: InformerFactory) -> list[Informer]:
    return list(factory._informers.values())
