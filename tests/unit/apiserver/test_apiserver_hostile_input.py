"""Hostile requests get a Status with the right code, never a 500 or plain text (issue #19).

One test per defect an outside tester found, each sent as raw bytes to the assembled server
(`ApiServer`, plain HTTP on a free port) so malformed HTTP reaches it unchanged.
"""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from podnet.apiserver.server import ApiServer, ServerOptions, parse_listen
from podnet.testing.fuzz import Answer, encode_json, problems_of, send

NS = "/api/v1/namespaces/default"


@pytest_asyncio.fixture
async def server(tmp_path: Path) -> AsyncIterator[ApiServer]:
    srv = ApiServer(
        ServerOptions(
            tmp_path / "state", listen=parse_listen(["127.0.0.1:0"]), controllers=False, tls=False
        )
    )
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


async def raw(server: ApiServer, data: bytes) -> Answer:
    answer = await send("127.0.0.1", server.ports[0], data, None)
    assert answer is not None, "the server did not answer"
    assert problems_of(answer) == [], answer
    return answer


def request(
    server: ApiServer,
    method: str,
    path: str,
    body: bytes | None = None,
    content_type: str = "application/json",
    headers: tuple[str, ...] = (),
) -> bytes:
    assert server.credentials is not None
    lines = [f"{method} {path} HTTP/1.1", "Host: x", "Connection: close"]
    lines.append(f"Authorization: Bearer {server.credentials.token}")
    if body is not None:
        lines += [f"Content-Type: {content_type}", f"Content-Length: {len(body)}"]
    lines += headers
    return "\r\n".join(lines).encode() + b"\r\n\r\n" + (body or b"")


def status(answer: Answer) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(answer.body)
    assert body["kind"] == "Status" and body["code"] == answer.status
    return body


def deployment(replicas: Any) -> dict[str, Any]:
    labels = {"app": "big"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "big"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "c", "image": "busybox"}]},
            },
        },
    }


@pytest.mark.asyncio
async def test_int32_fields_are_bounded_like_upstream(server: ApiServer) -> None:
    path = "/apis/apps/v1/namespaces/default/deployments"
    answer = await raw(server, request(server, "POST", path, encode_json(deployment(2**31))))
    assert answer.status == 400
    assert status(answer)["message"] == (
        'Deployment in version "v1" cannot be handled as a Deployment: json: cannot unmarshal '
        "number 2147483648 into Go struct field DeploymentSpec.spec.replicas of type int32"
    )
    created = await raw(server, request(server, "POST", path, encode_json(deployment(3))))
    assert created.status == 201
    # the scale subresource is an int32 too
    scale = {"apiVersion": "autoscaling/v1", "kind": "Scale", "spec": {"replicas": 2**31}}
    answer = await raw(server, request(server, "PUT", path + "/big/scale", encode_json(scale)))
    assert answer.status == 400 and "ScaleSpec.spec.replicas of type int32" in answer.body.decode()


@pytest.mark.asyncio
async def test_deep_nesting_is_refused_before_parsing(server: ApiServer) -> None:
    deep = b'{"metadata":{"name":"d"},"data":' + b"[" * 2000 + b"]" * 2000 + b"}"
    answer = await raw(server, request(server, "POST", f"{NS}/configmaps", deep))
    assert answer.status == 400 and "nested more than 100 levels" in status(answer)["message"]
    yaml_deep = b"data: " + b"[" * 2000 + b"]" * 2000
    answer = await raw(
        server, request(server, "POST", f"{NS}/configmaps", yaml_deep, "application/yaml")
    )
    assert answer.status == 400
    laughs = [b"metadata: {name: laughs}", b'a0: &a0 ["lol","lol","lol","lol","lol","lol"]']
    laughs += [f"a{i}: &a{i} [{','.join([f'*a{i - 1}'] * 9)}]".encode() for i in range(1, 10)]
    answer = await raw(
        server,
        request(server, "POST", f"{NS}/configmaps", b"\n".join(laughs), "application/yaml"),
    )
    assert answer.status == 400 and "aliases expanded" in status(answer)["message"]


@pytest.mark.asyncio
async def test_lone_surrogates_become_replacement_characters(server: ApiServer) -> None:
    body = b'{"metadata":{"name":"s"},"data":{"a":"x\\ud800y"}}'
    answer = await raw(server, request(server, "POST", f"{NS}/configmaps", body))
    assert answer.status == 201
    assert json.loads(answer.body)["data"] == {"a": "x\ufffdy"}  # as Go's decoder does
    key = b'{"metadata":{"name":"t"},"data":{"\\udfff":"x"}}'
    answer = await raw(server, request(server, "POST", f"{NS}/configmaps", key))
    assert answer.status == 422


@pytest.mark.asyncio
async def test_wrong_types_are_refused_before_any_code_reads_them(server: ApiServer) -> None:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": "hello"}
    answer = await raw(server, request(server, "POST", f"{NS}/pods", encode_json(pod)))
    assert answer.status == 400
    assert (
        "cannot unmarshal string into Go struct field Pod.spec of type v1.PodSpec"
        in (status(answer)["message"])
    )
    for bad in ({"containers": "x"}, {"containers": [{"name": 5}]}, {"nodeSelector": []}):
        pod["spec"] = bad
        answer = await raw(server, request(server, "POST", f"{NS}/pods", encode_json(pod)))
        assert answer.status == 400, bad


@pytest.mark.asyncio
async def test_numbers_json_cannot_hold_are_refused(server: ApiServer) -> None:
    for token in (b"NaN", b"Infinity", b"1e400", b"1" * 5000, b"9223372036854775808"):
        body = b'{"metadata":{"name":"n","generation":' + token + b"}}"
        answer = await raw(server, request(server, "POST", f"{NS}/configmaps", body))
        assert answer.status == 400, token
    # the same as YAML: a POST in application/yaml and a server-side apply patch
    for content_type, method, path in (
        ("application/yaml", "POST", f"{NS}/configmaps"),
        ("application/apply-patch+yaml", "PATCH", f"{NS}/configmaps/n?fieldManager=m"),
    ):
        body = b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: n\n  generation: " + (
            b"1" * 5000
        )
        answer = await raw(server, request(server, method, path, body, content_type))
        assert answer.status == 400, content_type
        assert "does not fit in a 64-bit integer" in status(answer)["message"]


@pytest.mark.asyncio
async def test_a_compressed_body_is_refused_not_a_500(server: ApiServer) -> None:
    body = encode_json({"metadata": {"name": "g"}})
    for data in (body, gzip.compress(body)):  # a false header, and a true one
        answer = await raw(
            server,
            request(server, "POST", f"{NS}/configmaps", data, headers=("Content-Encoding: gzip",)),
        )
        assert answer.status == 415


@pytest.mark.asyncio
async def test_watch_resource_version_out_of_range_is_a_400_before_the_stream(
    server: ApiServer,
) -> None:
    for rv in ("99999999999999999999999", "9223372036854775808", "-1", "abc"):
        answer = await raw(
            server, request(server, "GET", f"{NS}/configmaps?watch=1&resourceVersion={rv}")
        )
        assert answer.status == 400, rv
        assert "invalid resourceVersion" in status(answer)["message"]
    answer = await raw(server, request(server, "GET", f"{NS}/configmaps?watch=1&timeoutSeconds=1"))
    assert answer.status == 200
    for value in ("99999999999999999999999", "1.5", "0x10"):
        answer = await raw(server, request(server, "GET", f"{NS}/configmaps?limit={value}"))
        assert answer.status == 400, value


@pytest.mark.asyncio
async def test_long_paths_selectors_headers_and_odd_names_get_a_status(server: ApiServer) -> None:
    # up to upstream's 1 MiB they reach the API and get its own answers
    answer = await raw(server, request(server, "GET", f"{NS}/configmaps/" + "a" * 10_000))
    assert answer.status == 404 and status(answer)["reason"] == "NotFound"
    answer = await raw(
        server, request(server, "GET", f"{NS}/configmaps?labelSelector=" + "a" * 10_000)
    )
    assert answer.status == 400
    answer = await raw(
        server, request(server, "GET", f"{NS}/configmaps", headers=("X-Big: " + "a" * 10_000,))
    )
    assert answer.status == 200
    answer = await raw(server, request(server, "GET", f"{NS}/configmaps/a%0Ab"))
    assert answer.status == 404 and status(answer)["details"]["name"] == "a\nb"
    # beyond the limits, aiohttp's own parser refuses them: still a Status
    answer = await raw(server, request(server, "GET", f"{NS}/configmaps/" + "a" * 2_000_000))
    assert answer.status == 431
    answer = await raw(server, request(server, "GET", "/api", headers=("X-Big: " + "a" * 70_000,)))
    assert answer.status == 431
    for garbage in (b"GARBAGE\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n", b"BREW /api HTTP/1.1\r\n\r\n"):
        answer = await raw(server, garbage)
        assert answer.status == 400 and status(answer)["reason"] == "BadRequest", garbage


@pytest.mark.asyncio
async def test_large_bodies_are_read_whole(server: ApiServer) -> None:
    # read(n) returns what has arrived so far: a body sent in pieces was cut and "invalid JSON"
    data = {f"k{i}": "v" * 90 for i in range(9000)}  # ~900 KB, under the 1 MiB ConfigMap limit
    body = encode_json({"metadata": {"name": "big"}, "data": data})
    answer = await raw(server, request(server, "POST", f"{NS}/configmaps", body))
    assert answer.status == 201, answer.body[:300]
    too_big = b"[" + b"0," * (2 * 1024 * 1024) + b"0]"
    answer = await raw(server, request(server, "POST", f"{NS}/configmaps", too_big))
    assert answer.status == 413


@pytest.mark.asyncio
async def test_warning_headers_are_escaped_and_bounded(server: ApiServer) -> None:
    obj: dict[str, Any] = {"metadata": {"name": "w"}, "data": {}}
    obj["bad\r\nX-Injected: 1"] = 1
    for i in range(30):
        obj[f"extra{i}"] = i
    body = encode_json(obj)
    answer = await raw(
        server, request(server, "POST", f"{NS}/configmaps?fieldValidation=Warn", body)
    )
    assert answer.status == 201
    assert "x-injected" not in answer.headers


@pytest.mark.asyncio
async def test_an_abandoned_watch_is_released(server: ApiServer) -> None:
    # regression: a watch whose client hung up lived on (tasks, store subscription) until its
    # timeout, 30-60 minutes; a client could pile them up without bound
    await raw(server, request(server, "GET", f"{NS}/pods?watch=1&timeoutSeconds=1"))
    before = len(asyncio.all_tasks())  # with the store's own tasks, started by a first watch
    for _ in range(8):
        answer = await raw(server, request(server, "GET", f"{NS}/pods?watch=1"))
        assert answer.status == 200 and answer.streamed
    for _ in range(200):  # their tasks end as the server notices each hang-up
        if len(asyncio.all_tasks()) <= before:
            break
        await asyncio.sleep(0.05)
    assert len(asyncio.all_tasks()) <= before
