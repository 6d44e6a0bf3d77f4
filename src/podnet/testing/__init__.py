"""Helpers for tests and benchmarks: the API in memory, throwaway servers and labs that clean up
after themselves. Tests get most of them through fixtures (`tests/conftest.py`); benchmarks
import them. Nothing in production code imports from here.

- `api.InMemoryApi`: the real registry on a memory store, with call recording, fault injection
  and seeding (fixture `memory_api`); the one in-memory API for every component test.
- `server.ServerProcess`: a real `podnet server` child process (fixture `podnet_server`).
- `etcd.EtcdServer`: a throwaway etcd (fixture `etcd_url`).
- `ports.free_port`, `waiting.eventually`: the one way to pick a port and to poll.
- `flannel_lab`, `proxy_lab`: hand-built nodes in throwaway namespaces for the flannel and
  proxy kernel tests and benchmarks; `proxy`: Service/EndpointSlice builders and golden checks.
- `store_timing`: timing of a store driver on its own.
- `packets`: IPv4 headers and TCP checksums for the flannel datapath tests; `loops`: an event
  loop whose resolver fails, for the dials that must not use it (`podnet.dial`).
"""
