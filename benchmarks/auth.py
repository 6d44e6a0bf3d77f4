"""Authorization cost benchmark (not a test): what RBAC adds to each request.

Run from the repo:
    .venv/bin/python benchmarks/auth.py [--bindings 1000] [--requests 20000]

The real registry on the memory store gets the default policy (bootstrap) and `--bindings`
RoleBindings (each naming its own ServiceAccount in one of 100 namespaces, to the `view`
ClusterRole, which is aggregated); the server's `Auth` indexes them by watch. Then each case
asks `Auth.decide` `--requests` times: a ServiceAccount allowed by its RoleBinding, the same
account denied (delete nodes: every binding is looked at and nothing matches), a node reading
a secret its pod uses (Node authorizer), and the admin (system:masters).

Target (issue #12): authorization adds <= 1 ms p99 per request with 1k RoleBindings.
Prints a table and writes benchmarks/results/auth.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

from podnet.api.resources import BY_PLURAL
from podnet.apiserver.auth.attributes import Attributes
from podnet.apiserver.auth.chain import Auth
from podnet.apiserver.auth.user import admin_user, node_user, service_account_user
from podnet.apiserver.bootstrap import bootstrap
from podnet.apiserver.registry import Registry
from podnet.config import ClusterConfig
from podnet.store.memory import MemoryStore

RESULTS = Path(__file__).parent / "results" / "auth.json"
TARGET_P99_MS = 1.0
NAMESPACES = 100


async def setup(bindings: int, state_dir: Path) -> tuple[Auth, asyncio.Event]:
    registry = Registry(MemoryStore(), ClusterConfig(), ca_pem=b"-")
    await bootstrap(registry, "127.0.0.1", 6443)
    for i in range(NAMESPACES):
        await registry.create(BY_PLURAL["namespaces"], None, {"metadata": {"name": f"ns{i}"}})
    for i in range(bindings):
        namespace = f"ns{i % NAMESPACES}"
        body = {
            "metadata": {"name": f"rb{i}"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "view",
            },
            "subjects": [{"kind": "ServiceAccount", "name": f"sa{i}", "namespace": namespace}],
        }
        await registry.create(BY_PLURAL["rolebindings"], namespace, body)
    pod = {
        "metadata": {"name": "p"},
        "spec": {
            "nodeName": "n1",
            "containers": [{"name": "c", "image": "busybox"}],
            "volumes": [{"name": "s", "secret": {"secretName": "db"}}],
        },
    }
    await registry.create(BY_PLURAL["pods"], "ns0", pod)
    auth = Auth.for_state_dir(registry, state_dir, "admin-token")
    stop = asyncio.Event()
    asyncio.get_running_loop().create_task(auth.run(stop))
    await auth.rbac_index.synced.wait()
    await auth.pods.synced.wait()
    return auth, stop


async def measure(auth: Auth, attrs: Attributes, requests: int) -> tuple[list[float], bool]:
    samples = []
    allowed = False
    for _ in range(requests):
        started = time.perf_counter()
        allowed, _ = await auth.decide(attrs)
        samples.append((time.perf_counter() - started) * 1000)
    return samples, allowed


def p99(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=100)[98]


async def main(bindings: int, requests: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        auth, stop = await setup(bindings, Path(tmp))
        sa = service_account_user("ns7", "sa7")
        cases = {
            "SA list pods (RoleBinding -> view)": Attributes(
                sa, "list", True, "ns7", "", "v1", "pods"
            ),
            "SA delete nodes (denied)": Attributes(
                sa, "delete", True, "", "", "v1", "nodes", name="n1"
            ),
            "node get its pod's secret": Attributes(
                node_user("n1"), "get", True, "ns0", "", "v1", "secrets", name="db"
            ),
            "admin (system:masters)": Attributes(
                admin_user(), "delete", True, "", "", "v1", "nodes", name="n1"
            ),
        }
        rows = []
        for name, attrs in cases.items():
            samples, allowed = await measure(auth, attrs, requests)
            rows.append(
                {
                    "case": name,
                    "allowed": allowed,
                    "p50_ms": statistics.median(samples),
                    "p99_ms": p99(samples),
                    "p99_vs_target": p99(samples) / TARGET_P99_MS,
                }
            )
        stop.set()
    print(f"authorization cost with {bindings} RoleBindings, {requests} requests per case")
    print(f"{'case':38} {'allowed':>7} {'p50 ms':>8} {'p99 ms':>8} {'p99/target':>10}")
    for row in rows:
        print(
            f"{row['case']:38} {row['allowed']!s:>7} {row['p50_ms']:8.4f} {row['p99_ms']:8.4f} "
            f"{row['p99_vs_target']:10.3f}"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"bindings": bindings, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bindings", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=20000)
    args = parser.parse_args()
    asyncio.run(main(args.bindings, args.requests))
