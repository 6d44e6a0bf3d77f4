"""sharedjson.loads: json.loads's result, with strings shared between decoded objects."""

from __future__ import annotations

import json
import tracemalloc
from typing import Any

import pytest

from podnet.api import sharedjson

DOCUMENTS = [
    b'{"metadata":{"name":"a","labels":{"app":"web"}},"spec":{"replicas":3}}',
    b'{"a":1,"a":2,"b":[1,"x",{"c":null}],"d":true,"e":false,"f":1.5e3,"g":-0}',
    '{"unicode":"caf\\u00e9 \\ud83d\\ude00","raw":"日本"}'.encode(),
    b"[]",
    b'"just a string"',
    b'[{"k":"v"},{"k":"v"}]',
    b'{"big":123456789012345678901234567890,"neg":-5}',
]


@pytest.mark.parametrize("document", DOCUMENTS)
def test_same_result_as_json_loads(document: bytes) -> None:
    expected = json.loads(document)
    got = sharedjson.loads(document)
    assert got == expected
    assert json.dumps(got) == json.dumps(expected)  # same types and key order
    assert sharedjson.loads(document.decode()) == expected


def test_invalid_json_raises_like_json_loads() -> None:
    with pytest.raises(json.JSONDecodeError):
        sharedjson.loads(b'{"a":')


def pod(index: int) -> bytes:
    return json.dumps(
        {
            "metadata": {
                "name": f"web-{index}",
                "namespace": "scale",
                "uid": f"uid-{index:08d}",
                "labels": {"app": "web"},
            },
            "spec": {"nodeName": "hollow-0001", "containers": [{"name": "web", "image": "x"}]},
            "status": {
                "phase": "Running",
                "conditions": [
                    {"type": t, "status": "True", "lastTransitionTime": "2026-12-06T21:00:01Z"}
                    for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")
                ],
                "podIP": f"100.64.{index // 250}.{index % 250}",
            },
        }
    ).encode()


def test_objects_share_keys_and_values_but_not_containers() -> None:
    first, second = sharedjson.loads(pod(1)), sharedjson.loads(pod(2))
    key_of = {id(k) for k in first["status"]}
    assert all(id(k) in key_of for k in second["status"])
    assert first["status"]["phase"] is second["status"]["phase"]
    assert first["spec"]["nodeName"] is second["spec"]["nodeName"]
    assert first["metadata"] is not second["metadata"]
    second["status"]["phase"] = "Failed"  # callers own their dicts
    assert first["status"]["phase"] == "Running"


def test_memo_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sharedjson, "MEMO_LIMIT", 100)
    sharedjson._memo.clear()
    for index in range(1000):
        assert sharedjson.loads(pod(index))["metadata"]["uid"] == f"uid-{index:08d}"
        assert len(sharedjson._memo) <= 100 + 30  # emptied once past the limit
    sharedjson._memo.clear()


def traced_bytes(decode: Any, documents: list[bytes]) -> int:
    tracemalloc.start()
    try:
        kept = [decode(d) for d in documents]
        size, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(kept) == len(documents)
    return size


def test_many_decoded_objects_take_much_less_memory() -> None:
    documents = [pod(i) for i in range(2000)]
    shared = traced_bytes(sharedjson.loads, documents)
    plain = traced_bytes(json.loads, documents)
    assert shared < 0.7 * plain, (shared, plain)
