"""flannel for podnet: subnet leases on Nodes and the vxlan, udp and host-gw backends.

Public surface: `component.FlannelComponent` (the agent's overlay component),
`registry.BACKENDS` / `registry.get_backend`, `config.parse_net_conf` / `make_config`,
`leases.lease_from_node` / `LeaseWatcher`. See README.md beside this file for the packet path.
This package imports nothing at import time: the udp datapath process starts from it.
"""
