"""Whether one etcd member is healthy, and what it says of itself, over its HTTP endpoints.

What belongs here: `member_healthy(host, port)`, `member_status(host, port)` and
`leading_member(statuses)` (which of the members leads, from their statuses), standard
library only, so the lab (which starts etcd members for `podnet up --etcd N` and shows them in
`podnet status`) and the test harness (`podnet.testing.etcd`) ask the same questions without
importing the gRPC client. etcd answers `{"health": "true"}` only when the member has a leader
and a linearizable read succeeds, i.e. the cluster has a quorum and can take writes.
`member_status` is the v3 JSON gateway's `Maintenance.Status`: the member's own id
(`header.member_id`) and the id of the member it follows as leader (`leader`), both strings.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Sequence
from typing import Any


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


def member_status(host: str, port: int, timeout: float = 2.0) -> dict[str, Any] | None:
    """The member's `Maintenance.Status`; None when it does not answer."""
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request("POST", "/v3/maintenance/status", body=b"{}")
        body = json.loads(connection.getresponse().read())
    except (OSError, http.client.HTTPException, ValueError):
        return None
    finally:
        connection.close()
    return body if isinstance(body, dict) and "header" in body else None


def leading_member(statuses: Sequence[dict[str, Any] | None]) -> int | None:
    """Position in `statuses` (one `member_status` per member, None for one that did not
    answer) of the member that leads, as the first answering member naming one of the
    answering members as its leader says; None when none does."""
    ids = [None if st is None else str(st["header"].get("member_id")) for st in statuses]
    for status in statuses:
        if status is not None and str(status.get("leader")) in ids:
            return ids.index(str(status.get("leader")))
    return None
