"""`podnet trace` and `podnet graph`: the network of a lab made visible.

`snapshot` reads the state (API objects; per namespace links, routes, neighbours, fdb,
sockets, iptables-save and `nft -a list ruleset` through `podnet.kernel`) → `resolve` turns
FROM/TO into a probe → `plan` walks the probe through the snapshot (pure; `netfilter` runs
each hook's chains with the walkers in `agent/proxy/trace_*.py` and `agent/policy/trace.py`,
`listing` reads the kernel's nft listing) → `render` prints it or writes JSON.
"""
