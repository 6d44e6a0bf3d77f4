"""Whether one etcd member is healthy, asked over its HTTP `/health` endpoint.

What belongs here: `member_healthy(host, port)`, standard library only, so the lab (which
starts etcd members for `podnet up --etcd N`) and the test harness (`podnet.testing.etcd`)
ask the same question without importing the gRPC client. etcd answers `{"health": "true"}`
only when the member has a leader and a linearizable read succeeds, i.e. the cluster has a
quorum and can take writes.
"""

from __future__ import annotations

import http.client
import json


def member_healthy(host: str, port: int, timeout: float = 1.0) -> bool:
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request("GET", "/health")
        body = json.loads(connection.getresponse().read())
    except (OSError, http.client.HTTPException, ValueError):
        return False
    finally:
        connection.close()
    return isinstance(body, dict) and body.get("health") == "true"
