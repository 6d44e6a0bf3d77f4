"""Store tests: the contract suite (`test_store_contract.py`) runs unchanged on every driver
(memory, SQLite, etcd), beside each driver's own tests.

They live under `unit/` although some need etcd: a driver is a unit, the SQLite and memory runs
are fast and in-process, and keeping the whole contract here means every landing runs it (the
unit suite is what `land.sh` runs). The etcd runs use the session's throwaway etcd (`etcd_url`,
loopback, its own key prefix per test), are marked `etcd` (deselect with `-m "not etcd"`) and
skip when the etcd binary is missing.
"""
