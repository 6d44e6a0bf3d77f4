"""Helpers for tests and benchmarks: throwaway servers and fixtures that clean up after themselves.

- `ports.free_port`: the one way test code picks a loopback port.
- `server.ServerProcess`: a real `podnet server` child process (the `podnet_server` fixture).
- `etcd.EtcdServer`: a throwaway etcd (the `etcd_url` fixture).
- `store_timing`: timing of a store driver on its own.

Nothing in production code imports from here.
"""
