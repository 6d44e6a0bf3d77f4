"""Cluster DNS: Services and Pods by name, as CoreDNS's `kubernetes` plugin serves them.

- `cluster`: the server's indexed copy of Services, EndpointSlices, Namespaces (and Pods);
- `records`: `answer(view, config, qname, qtype)`, the pure decision of every in-zone reply;
- `wire`: queries and responses on the wire, and the cache of rendered answers;
- `forward`: names outside the zone go to the upstream resolvers, with a cache;
- `resolvconf`: resolv.conf parsed and rendered as the kubelet does (shared with the kubelet);
- `server`: the asyncio UDP + TCP shell, health, readiness and metrics (the `coredns` pods).
"""
