"""podnet.controllers: the control loops of `podnet server` (issue #5).

Entry point: `manager.run_controllers(api, config, stop)`, which the API server calls with its
in-process `LocalApi`. Every loop has the same shape (`controller.Controller`): shared
informers (`informer.py`: list, then watch from the list's resourceVersion, re-list on 410)
whose handlers only enqueue keys; a work queue with per-key dedup and exponential back-off
(`workqueue.py`); a reconcile that asks a pure `plan_*` function what to write and applies
it (`writes.py`), guarded by expectations so it never acts twice on a stale cache
(`expectations.py`).

The loops: `scheduler` (pods → nodes), `nodeipam` (node podCIDRs), `endpoints` and
`endpointslices` (Service selectors → addresses), `mirroring` (user-written Endpoints →
slices), `replicaset` and `deployment` (rollouts, `kubectl scale` / `rollout status` /
`rollout undo`), `garbagecollector` (ownerReferences, foreground/orphan finalizers),
`nodelifecycle` (silent nodes → Unknown, taints, eviction). `leaderelection` keeps one active
set of controllers when several servers share one etcd; `events` records what they did.
ClusterIP/NodePort allocation is not here: the API server does it synchronously.
"""
