"""A seeded fuzzer of the API server: hostile requests, and what every answer must look like.

What belongs here: `generate(seed, count)` (deterministic cases: typed mutations of valid
objects guided by `api.schema`, hostile strings, deep nesting, bad query parameters, every
patch type, subresource bodies, kubectl protobuf, malformed HTTP), `send` (a raw HTTP/1.1
client that puts exactly the case's bytes on the wire, so malformed requests reach the
server), `problems_of` (what is wrong with one answer) and `run` (many cases against a live
server, with the server's memory sampled). `tests/e2e/test_api_fuzz.py` runs a few thousand
cases; `benchmarks/fuzz.py` runs many more and prints the table.

What every answer must satisfy:
- the server answers (within `ANSWER_TIMEOUT`), and never with a 5xx;
- every error (>= 400) is a JSON `meta/v1 Status` whose `code` is the HTTP status;
- a watch (200, chunked) is newline-delimited JSON events, and an ERROR event holds a Status;
and across a run the server's resident memory stays bounded (the caller asserts the bound).

Out of scope on purpose: `pods/log`, `pods/exec` and friends (the server relays them to the
address a Node object names; fuzzed Nodes would aim that traffic at arbitrary addresses).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import json
import random
import ssl
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from podnet.api import schema
from podnet.testing.server import ServerProcess

NAMESPACE = "fuzz"
ANSWER_TIMEOUT = 20.0  # seconds for a complete answer (a watch: for its headers)
WATCH_WINDOW = 0.15  # seconds of a watch stream read before hanging up
NAMES = [f"f{i}" for i in range(6)]
JSON_TYPE = "Content-Type: application/json"

Obj = dict[str, Any]


# --- cases -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Case:
    category: str
    what: str  # a short description for reports
    request: bytes  # the exact bytes sent

    @property
    def request_line(self) -> str:
        return self.request.split(b"\r\n", 1)[0][:200].decode("latin-1")


class RawJson:
    """A JSON token json.dumps cannot produce (`1e400`, `NaN`, 5,000 digits), spliced in."""

    def __init__(self, text: str) -> None:
        self.text = text


def encode_json(value: Any) -> bytes:
    raws: list[str] = []

    def mark(item: Any) -> Any:
        if isinstance(item, RawJson):
            raws.append(item.text)
            return f"@@RAW{len(raws) - 1}@@"
        if isinstance(item, dict):
            return {k: mark(v) for k, v in item.items()}
        if isinstance(item, list):
            return [mark(v) for v in item]
        return item

    text = json.dumps(mark(value))
    for i, raw in enumerate(raws):
        text = text.replace(f'"@@RAW{i}@@"', raw, 1)
    return text.encode()


# --- valid objects ---------------------------------------------------------------------------

_B64 = base64.b64encode(b"secret").decode()


def _container() -> Obj:
    return {
        "name": "c",
        "image": "busybox:1.36",
        "command": ["sleep", "3600"],
        "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
        "env": [{"name": "A", "value": "b"}],
        "resources": {"limits": {"cpu": "100m", "memory": "64Mi"}},
        "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 5},
    }


def _template() -> Obj:
    return {"metadata": {"labels": {"app": "fuzz"}}, "spec": {"containers": [_container()]}}


def valid_object(plural: str, name: str) -> Obj:
    """A valid object of `plural` named `name` (the starting point of typed mutations)."""
    meta: Obj = {"name": name, "labels": {"app": "fuzz"}, "annotations": {"note": "fuzz"}}
    selector = {"matchLabels": {"app": "fuzz"}}
    bodies: dict[str, Obj] = {
        "pods": {"kind": "Pod", "apiVersion": "v1", "spec": {"containers": [_container()]}},
        "services": {
            "kind": "Service",
            "apiVersion": "v1",
            "spec": {
                "selector": {"app": "fuzz"},
                "ports": [{"name": "http", "port": 80, "targetPort": 8080}],
            },
        },
        "configmaps": {"kind": "ConfigMap", "apiVersion": "v1", "data": {"a.txt": "b"}},
        "secrets": {"kind": "Secret", "apiVersion": "v1", "data": {"k": _B64}},
        "serviceaccounts": {"kind": "ServiceAccount", "apiVersion": "v1"},
        "endpoints": {
            "kind": "Endpoints",
            "apiVersion": "v1",
            "subsets": [{"addresses": [{"ip": "10.244.0.5"}], "ports": [{"port": 8080}]}],
        },
        "events": {
            "kind": "Event",
            "apiVersion": "v1",
            "involvedObject": {"kind": "Pod", "name": "f0", "namespace": NAMESPACE},
            "reason": "Fuzz",
            "message": "fuzz",
            "type": "Normal",
            "count": 1,
        },
        "deployments": {
            "kind": "Deployment",
            "apiVersion": "apps/v1",
            "spec": {"replicas": 1, "selector": selector, "template": _template()},
        },
        "replicasets": {
            "kind": "ReplicaSet",
            "apiVersion": "apps/v1",
            "spec": {"replicas": 1, "selector": selector, "template": _template()},
        },
        "endpointslices": {
            "kind": "EndpointSlice",
            "apiVersion": "discovery.k8s.io/v1",
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.244.0.5"], "conditions": {"ready": True}}],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        },
        "leases": {
            "kind": "Lease",
            "apiVersion": "coordination.k8s.io/v1",
            "spec": {"holderIdentity": "fuzz", "leaseDurationSeconds": 15},
        },
        "nodes": {"kind": "Node", "apiVersion": "v1", "spec": {"unschedulable": True}},
        "namespaces": {"kind": "Namespace", "apiVersion": "v1"},
    }
    obj = copy.deepcopy(bodies[plural])
    obj["metadata"] = meta
    return obj


_ROOTS = {
    "pods": "/api/v1",
    "services": "/api/v1",
    "configmaps": "/api/v1",
    "secrets": "/api/v1",
    "serviceaccounts": "/api/v1",
    "endpoints": "/api/v1",
    "events": "/api/v1",
    "nodes": "/api/v1",
    "namespaces": "/api/v1",
    "deployments": "/apis/apps/v1",
    "replicasets": "/apis/apps/v1",
    "endpointslices": "/apis/discovery.k8s.io/v1",
    "leases": "/apis/coordination.k8s.io/v1",
}
_CLUSTER_SCOPED = {"nodes", "namespaces"}
PLURALS = sorted(_ROOTS)


def collection_path(plural: str) -> str:
    if plural in _CLUSTER_SCOPED:
        return f"{_ROOTS[plural]}/{plural}"
    return f"{_ROOTS[plural]}/namespaces/{NAMESPACE}/{plural}"


def item_name(plural: str, name: str) -> str:
    # cluster-scoped objects carry the run's namespace in their name: runs never collide
    return f"{NAMESPACE}-{name}" if plural in _CLUSTER_SCOPED else name


# --- hostile values ----------------------------------------------------------------------------

HOSTILE_STRINGS = [
    "",
    " ",
    "\x00",
    "a\nb",
    "\r\n\r\nHTTP/1.1 200 OK",
    "\ud800",
    "\udfff\ud800x",
    "\u202eevil",
    "\ufeff",
    "😀" * 20,
    "../../etc/passwd",
    "%0A%00",
    "a" * 63,
    "a" * 64,
    "a" * 254,
    "A" * 300,
    "-leading",
    "trailing-",
    "UPPER",
    "$(reboot)",
    "' OR 1=1 --",
    "%s%n%x",
    "{{.}}",
    "null",
    "true",
    "0x10",
    "1e400",
    "10.0.0.1/33",
    "::ffff:1.2.3.4",
    "999999999999999999999",
    "kube-system",
    "default",
]

HOSTILE_NUMBERS: list[Any] = [
    0,
    -1,
    1,
    2**31 - 1,
    2**31,
    -(2**31) - 1,
    2**63 - 1,
    2**63,
    -(2**63) - 1,
    10**30,
    1.5,
    -0.0,
    1e308,
    5e-324,
    RawJson("1e400"),
    RawJson("-1e400"),
    RawJson("NaN"),
    RawJson("Infinity"),
    RawJson("-0"),
    RawJson("1" * 5000),
    RawJson("123456789012345678901234567890"),
    RawJson("1.0"),
    RawJson("1E3"),
]


def deep_value(depth: int) -> Any:
    value: Any = "bottom"
    for i in range(depth):
        value = [value] if i % 2 else {"d": value}
    return value


class Generator:
    """Builds cases from one seeded random source (same seed, same cases)."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)  # noqa: S311 - reproducible fuzzing, not security
        self.token = ""

    def pick(self, items: list[Any]) -> Any:
        return items[self.rng.randrange(len(items))]

    def hostile_string(self) -> str:
        if self.rng.random() < 0.05:
            text: str = self.pick(["x", "é", "\ud800"])
            return text * self.rng.choice([1000, 70_000, 300_000])
        return str(self.pick(HOSTILE_STRINGS))

    def hostile_value(self, depth: int = 0) -> Any:
        roll = self.rng.random()
        if roll < 0.35:
            return self.pick(HOSTILE_NUMBERS)
        if roll < 0.6:
            return self.hostile_string()
        if roll < 0.7:
            return self.pick([True, False, None])
        if roll < 0.8 or depth > 0:
            return self.pick([[], {}, [None], {"": None}, [1, "a", None, {}], {"a": [[]]}])
        if roll < 0.85:
            return deep_value(self.rng.choice([5, 50, 99, 101, 150]))  # deeper: `nesting`
        if roll < 0.9:  # long lists of small values
            return [self.pick(HOSTILE_NUMBERS[:10]) for _ in range(self.rng.choice([2, 100, 5000]))]
        return {self.hostile_string(): self.hostile_value(depth + 1) for _ in range(3)}

    # -- schema-guided paths --

    def schema_path(self, node: schema.Schema) -> list[str | int]:
        """A random path of fields (ints for list items) into `node`'s typed shape."""
        path: list[str | int] = []
        while self.rng.random() < 0.85:
            if isinstance(node, schema.Struct) and node.fields:
                name = self.pick(sorted(node.fields))
                path.append(name)
                node = node.fields[name]
            elif isinstance(node, schema.Array):
                path.append(0)
                node = node.item
            elif isinstance(node, schema.Map):
                path.append(self.pick(["k", "app", self.hostile_string()]))
                node = node.value
            else:
                break
        return path

    def set_path(self, obj: Any, path: list[str | int], value: Any) -> Any:
        """`obj` with `value` at `path`, creating objects and lists on the way."""
        if not path:
            return value
        head, rest = path[0], path[1:]
        if isinstance(head, int):
            items = obj if isinstance(obj, list) else []
            if not items:
                items.append({})
            items[0] = self.set_path(items[0], rest, value)
            return items
        target = obj if isinstance(obj, dict) else {}
        target[head] = self.set_path(target.get(head), rest, value)
        return target

    def mutated(self, plural: str, name: str) -> Obj:
        obj = valid_object(plural, name)
        kind = obj["kind"]
        for _ in range(self.rng.choice([1, 1, 1, 2, 3])):
            path = self.schema_path(schema.KINDS[kind])
            if not path:
                path = [self.pick(["spec", "metadata", "status", "data", "kind", "apiVersion"])]
            obj = self.set_path(obj, path, self.hostile_value())
        if self.rng.random() < 0.1:  # an unknown field, for fieldValidation
            obj[self.hostile_string() or "extra"] = self.hostile_value()
        return obj

    # -- requests --

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        content_type: str = "application/json",
        headers: list[tuple[str, str]] | None = None,
        auth: bool = True,
    ) -> bytes:
        lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
        if auth:
            lines.append(f"Authorization: Bearer {self.token}")
        if body is not None:
            lines += [f"Content-Type: {content_type}", f"Content-Length: {len(body)}"]
        lines += [f"{k}: {v}" for k, v in headers or []]
        head = "\r\n".join(lines).encode("utf-8", "surrogatepass") + b"\r\n\r\n"
        return head + (body or b"")

    def head(self, method: str, path: str, *lines: str, auth: bool = True) -> bytes:
        """A request head with exactly these extra header lines (no Content-Length added)."""
        head = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
        if auth:
            head.append(f"Authorization: Bearer {self.token}")
        text = "\r\n".join([*head, *lines]) + "\r\n\r\n"
        return text.encode("utf-8", "surrogatepass")

    def query(self, params: list[tuple[str, str]]) -> str:
        if not params:
            return ""
        parts = [f"{quote(k)}={quote(v.encode('utf-8', 'surrogatepass'))}" for k, v in params]
        return "?" + "&".join(parts)

    def some_name(self, plural: str) -> str:
        return item_name(plural, self.pick(NAMES))

    def item_path(self, plural: str, name: str | None = None) -> str:
        segment = (name or self.some_name(plural)).encode("utf-8", "surrogatepass")
        return f"{collection_path(plural)}/{quote(segment, safe='')}"

    def body(self, value: Any) -> tuple[bytes, str]:
        """`value` as JSON (usually) or YAML (sometimes), with its content type."""
        if self.rng.random() < 0.1:
            try:
                import yaml

                text = yaml.safe_dump(json.loads(encode_json(value)), allow_unicode=True)
                return text.encode("utf-8", "surrogatepass"), "application/yaml"
            except (ValueError, TypeError):
                pass  # RawJson tokens have no YAML form: send the JSON
        return encode_json(value), "application/json"

    # -- categories --

    def typed(self) -> Case:
        plural = self.pick(PLURALS)
        name = self.pick(NAMES)
        obj = self.mutated(plural, item_name(plural, name))
        data, ctype = self.body(obj)
        validation = self.pick(["", "Strict", "Warn", "Ignore"])
        params = [("fieldValidation", validation)] if validation else []
        if self.rng.random() < 0.6:
            path = collection_path(plural) + self.query(params)
            return Case("typed", f"create {plural}", self.request("POST", path, data, ctype))
        path = self.item_path(plural, item_name(plural, name)) + self.query(params)
        return Case("typed", f"update {plural}", self.request("PUT", path, data, ctype))

    def strings(self) -> Case:
        plural = self.pick(PLURALS)
        obj = valid_object(plural, item_name(plural, self.pick(NAMES)))
        where = self.pick(["name", "generateName", "label key", "label value", "annotation"])
        text = self.hostile_string()
        meta = obj["metadata"]
        if where in ("name", "generateName"):
            meta[where] = text
        elif where == "label key":
            meta["labels"] = {text: "v"}
        elif where == "label value":
            meta["labels"] = {"k": text}
        else:
            meta["annotations"] = {text: text}
        if plural in ("configmaps", "secrets") and self.rng.random() < 0.5:
            obj["data"] = {text: _B64 if plural == "secrets" else text}
        data, ctype = self.body(obj)
        if self.rng.random() < 0.3:  # the hostile string in the URL instead
            path = self.item_path(plural, text)
            return Case("strings", f"get {plural} by {where}", self.request("GET", path))
        return Case(
            "strings",
            f"create {plural} with hostile {where}",
            self.request("POST", collection_path(plural), data, ctype),
        )

    def nesting(self) -> Case:
        plural = self.pick(PLURALS)
        depth = self.rng.choice([50, 99, 100, 101, 200, 2000, 100_000])
        kind = self.rng.random()
        path = collection_path(plural)
        if kind < 0.4:  # deep JSON, as text (json.dumps itself would recurse)
            inner = "[" * depth + "]" * depth
            text = f'{{"metadata":{{"name":"deep"}},"data":{{"x":{inner}}}}}'
            return Case("nesting", f"JSON depth {depth}", self.request("POST", path, text.encode()))
        if kind < 0.6:  # deep YAML, flow and block style
            if self.rng.random() < 0.5:
                text = "metadata: {name: deep}\ndata: " + "[" * depth + "]" * depth
            else:
                text = "metadata: {name: deep}\ndata:\n" + "".join(
                    " " * i + "- \n" for i in range(min(depth, 3000))
                )
            body = text.encode()
            return Case(
                "nesting",
                f"YAML depth {depth}",
                self.request("POST", path, body, "application/yaml"),
            )
        if kind < 0.8:  # YAML aliases: a billion laughs
            lines = ["metadata: {name: laughs}", 'a0: &a0 ["lol","lol","lol","lol","lol"]']
            for i in range(1, self.rng.choice([3, 9, 12])):
                refs = ",".join([f"*a{i - 1}"] * 9)
                lines.append(f"a{i}: &a{i} [{refs}]")
            body = "\n".join(lines).encode()
            return Case(
                "nesting", "YAML alias bomb", self.request("POST", path, body, "application/yaml")
            )
        # wide: a large flat list or many keys, near and over the body limit
        count = self.rng.choice([10_000, 200_000, 400_000])
        value = {"metadata": {"name": "wide"}, "data": {f"k{i}": "v" for i in range(count)}}
        return Case("nesting", f"{count} keys", self.request("POST", path, encode_json(value)))

    def query_params(self) -> Case:
        plural = self.pick(PLURALS)
        bad_ints = ["-1", "0", "abc", "1e3", "1.5", "+5", "0x10", "", " ", "٣"]
        bad_ints += ["9223372036854775807", "9223372036854775808", "99999999999999999999999"]
        selectors = ["a in (", "!", "a=b,,c", "a notin ()", "==", "a!=", "x" * 70_000]
        selectors += ["a=" + "b" * 64, "metadata.name=f0", "spec.nodeName==x", "a=b=c", "%ff"]
        params: list[tuple[str, str]] = []
        for _ in range(self.rng.randint(1, 4)):
            name = self.pick(
                [
                    "limit",
                    "timeoutSeconds",
                    "resourceVersion",
                    "resourceVersionMatch",
                    "labelSelector",
                    "fieldSelector",
                    "continue",
                    "allowWatchBookmarks",
                    "includeObject",
                    "watch",
                    "pretty",
                    "sendInitialEvents",
                ]
            )
            if name in ("limit", "timeoutSeconds", "resourceVersion"):
                value = self.pick(bad_ints)
            elif name in ("labelSelector", "fieldSelector"):
                value = self.pick(selectors)
            elif name == "continue":
                token = encode_json(
                    {"id": self.hostile_value(), "rv": self.hostile_value(), "start": -5}
                )
                value = self.pick(["garbage", "", base64.urlsafe_b64encode(token).decode()])
            else:
                value = self.pick(
                    ["true", "1", "false", "Object", "garbage", self.hostile_string()]
                )
            params.append((name, value))
        watch = self.rng.random() < 0.3
        if watch:
            params.append(("watch", "true"))
        headers = []
        if self.rng.random() < 0.3:
            accept = self.pick(
                [
                    "application/json;as=Table;v=v1;g=meta.k8s.io",
                    "application/json;as=Table;v=v1beta1;g=meta.k8s.io, application/json",
                    "application/vnd.kubernetes.protobuf",
                    "text/html",
                    "*/*",
                    "garbage;;;=",
                ]
            )
            headers.append(("Accept", accept))
        if self.rng.random() < 0.5:
            path = collection_path(plural)
        elif self.rng.random() < 0.5:
            path = f"{_ROOTS[plural]}/{plural}"  # across namespaces
        else:
            path = self.item_path(plural)
        method = "GET"
        if not watch and self.rng.random() < 0.15:
            method = "DELETE"
            params.append(("gracePeriodSeconds", self.pick(bad_ints)))
            params.append(("propagationPolicy", self.pick(["Orphan", "Foreground", "bogus"])))
            params.append(("dryRun", self.pick(["All", "bogus"])))
        return Case(
            "query",
            f"{method} {plural} with {','.join(k for k, _ in params)}",
            self.request(method, path + self.query(params), headers=headers),
        )

    def patch(self) -> Case:
        plural = self.pick(PLURALS)
        name = self.some_name(plural)
        content_type = self.pick(
            [
                "application/merge-patch+json",
                "application/strategic-merge-patch+json",
                "application/json-patch+json",
                "application/apply-patch+yaml",
                "application/json",
                "text/plain",
            ]
        )
        body: Any
        if content_type == "application/json-patch+json":
            ops = []
            for _ in range(self.rng.randint(1, 4)):
                node = schema.KINDS[valid_object(plural, name)["kind"]]
                pointer = "/" + "/".join(
                    str(p).replace("~", "~0").replace("/", "~1") for p in self.schema_path(node)
                )
                op: Obj = {
                    "op": self.pick(["add", "remove", "replace", "move", "copy", "test", "bogus"]),
                    "path": self.pick(
                        [pointer, "", "/", "/metadata/~2", "/spec/containers/-", "/x/999999999999"]
                    ),
                    "value": self.hostile_value(),
                }
                if self.rng.random() < 0.3:
                    op["from"] = self.pick([pointer, "/metadata", "/metadata/labels", "/"])
                ops.append(op)
            body = self.pick([ops, ops, {"op": "add"}, "string", [None], [[]]])
        elif content_type == "application/apply-patch+yaml" and self.rng.random() < 0.7:
            body = self.mutated(plural, name)  # a whole configuration, as appliers send
        else:
            node = schema.KINDS[valid_object(plural, name)["kind"]]
            body = self.set_path({}, self.schema_path(node), self.hostile_value())
            if self.rng.random() < 0.1:
                body = self.hostile_value()
            if self.rng.random() < 0.2:  # strategic merge patch directives
                body = self.set_path(
                    body if isinstance(body, dict) else {},
                    ["spec", "containers"],
                    [{"$patch": self.pick(["delete", "replace", "bogus"]), "name": "c"}],
                )
        data = encode_json(body)
        params = [("fieldValidation", self.pick(["Strict", "Warn", "Ignore"]))]
        if self.rng.random() < 0.8:  # managedFields tracking; an apply needs a manager
            params.append(("fieldManager", self.pick(["fuzz-a", "fuzz-b", "kubectl"])))
        if content_type == "application/apply-patch+yaml" and self.rng.random() < 0.3:
            params.append(("force", self.pick(["true", "false", "maybe"])))
        sub = self.pick(["", "", "", "/status"])
        path = self.item_path(plural, name) + sub + self.query(params)
        return Case(
            "patch",
            f"{content_type} {plural}{sub}",
            self.request("PATCH", path, data, content_type),
        )

    def subresource(self) -> Case:
        choice = self.rng.random()
        if choice < 0.4:
            plural = self.pick(["deployments", "replicasets"])
            name = self.some_name(plural)
            scale = {"kind": "Scale", "apiVersion": "autoscaling/v1", "metadata": {"name": name}}
            scale = self.set_path(
                scale, self.schema_path(schema.KINDS["Scale"]) or ["spec"], self.hostile_value()
            )
            method = self.pick(["PUT", "PATCH", "GET"])
            ctype = "application/merge-patch+json" if method == "PATCH" else "application/json"
            path = self.item_path(plural, name) + "/scale"
            body = encode_json(scale) if method != "GET" else None
            return Case(
                "subresource", f"{method} {plural}/scale", self.request(method, path, body, ctype)
            )
        if choice < 0.7:
            name = self.some_name("pods")
            binding = {"kind": "Binding", "apiVersion": "v1", "metadata": {"name": name}}
            binding = self.set_path(
                binding,
                self.schema_path(schema.KINDS["Binding"]) or ["target"],
                self.hostile_value(),
            )
            path = self.item_path("pods", name) + "/binding"
            return Case(
                "subresource", "POST pods/binding", self.request("POST", path, encode_json(binding))
            )
        plural = self.pick(["pods", "services", "nodes", "deployments", "namespaces"])
        name = self.some_name(plural)
        obj = valid_object(plural, name)
        obj = self.set_path(
            obj, ["status", *self.schema_path(schema.KINDS[obj["kind"]])[1:]], self.hostile_value()
        )
        path = self.item_path(plural, name) + "/status"
        return Case(
            "subresource", f"PUT {plural}/status", self.request("PUT", path, encode_json(obj))
        )

    def delete(self) -> Case:
        plural = self.pick(PLURALS)
        options: Any = {"kind": "DeleteOptions", "apiVersion": "v1"}
        options = self.set_path(
            options,
            self.schema_path(schema.KINDS["DeleteOptions"]) or ["gracePeriodSeconds"],
            self.hostile_value(),
        )
        path = self.item_path(plural) if self.rng.random() < 0.7 else collection_path(plural)
        return Case(
            "delete", f"DELETE {plural}", self.request("DELETE", path, encode_json(options))
        )

    def protobuf(self) -> Case:
        kind = self.pick(["Pod", "Service", "ConfigMap", "Deployment", "Namespace"])
        version = "apps/v1" if kind == "Deployment" else "v1"
        plural = {"Pod": "pods", "Service": "services", "ConfigMap": "configmaps"}.get(
            kind, {"Deployment": "deployments", "Namespace": "namespaces"}.get(kind, "pods")
        )

        def field(number: int, wire: int, payload: bytes | int) -> bytes:
            key = _varint(number << 3 | wire)
            if wire == 0:
                assert isinstance(payload, int)
                return key + _varint(payload)
            assert isinstance(payload, bytes)
            return key + _varint(len(payload)) + payload

        type_meta = field(1, 2, version.encode()) + field(2, 2, kind.encode())
        raw = bytes(self.rng.randrange(256) for _ in range(self.rng.choice([0, 5, 40, 300])))
        if self.rng.random() < 0.5:  # a plausible message: metadata with a hostile name
            name = self.hostile_string().encode("utf-8", "surrogatepass")
            raw = field(1, 2, field(1, 2, name)) + raw[:10]
        envelope = field(1, 2, type_meta) + field(2, 2, raw)
        if self.rng.random() < 0.2:
            envelope += field(3, 2, b"gzip")
        data = b"k8s\x00" + envelope
        return Case(
            "protobuf",
            f"protobuf {kind}",
            self.request(
                "POST", collection_path(plural), data, "application/vnd.kubernetes.protobuf"
            ),
        )

    def http(self) -> Case:
        """Malformed or unusual HTTP: what the server's HTTP layer must answer with a Status."""
        base = collection_path("configmaps")
        good = encode_json(valid_object("configmaps", "f1"))
        token = self.token
        choice = self.rng.randrange(17)
        if choice == 0:
            return Case(
                "http",
                "long path",
                self.request("GET", base + "/" + "a" * self.rng.choice([10_000, 2_000_000])),
            )
        if choice == 1:
            header = [("X-Big", "a" * self.rng.choice([10_000, 70_000]))]
            return Case("http", "long header", self.request("GET", base, headers=header))
        if choice == 2:
            many = [(f"X-H{i}", "v") for i in range(self.rng.choice([100, 200]))]
            return Case("http", "many headers", self.request("GET", base, headers=many))
        if choice == 3:
            line = self.pick(
                [
                    b"GARBAGE\r\n\r\n",
                    b"GET\r\n\r\n",
                    b"GET / HTTP/9.9\r\n\r\n",
                    b"\x16\x03\x01\x00\xa5\x01\r\n\r\n",
                    b"GET /api HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
                ]
            )
            return Case("http", "bad request line", line)
        if choice == 4:
            length = self.pick(["-1", "abc", "99999999999999999999", "10, 20"])
            head = self.head("POST", base, JSON_TYPE, f"Content-Length: {length}")
            return Case("http", "bad Content-Length", head + good)
        if choice == 5:
            head = self.head("POST", base, JSON_TYPE, "Transfer-Encoding: chunked")
            chunks = self.pick(
                [
                    # complete requests only: a body that never ends waits for its client
                    b"zz\r\n{}\r\n0\r\n\r\n",
                    b"-1\r\n{}\r\n0\r\n\r\n",
                    b"2;ext=1\r\n{}\r\n0\r\n\r\n",
                    b"2\r\n{}XX0\r\n\r\n",
                ]
            )
            return Case("http", "bad chunked framing", head + chunks)
        if choice == 6:
            encoding = self.pick(["gzip", "deflate", "br", "identity, gzip", "bogus"])
            return Case(
                "http",
                f"Content-Encoding {encoding}",
                self.request("POST", base, good, headers=[("Content-Encoding", encoding)]),
            )
        if choice == 7:
            method = self.pick(["BREW", "TRACE", "OPTIONS", "CONNECT", "HEAD", "PROPFIND"])
            return Case("http", f"method {method}", self.request(method, base))
        if choice == 8:
            auth = self.pick(
                [
                    "Basic YWRtaW46YWRtaW4=",
                    "Bearer",
                    "Bearer ",
                    f"Bearer {token}x",
                    "bearer " + token,
                    "Bearer \u00e9",
                ]
            )
            head = self.head("GET", base, f"Authorization: {auth}", auth=False)
            return Case("http", "bad Authorization", head)
        if choice == 9:
            return Case("http", "no credentials", self.request("GET", base, auth=False))
        if choice == 10:
            segment = self.pick(
                ["%zz", "%ff%fe", "%00", "%2F", "..", ".", "%2e%2e", "a%0Ab", "%", "😀"]
            )
            return Case(
                "http", f"path segment {segment!r}", self.request("GET", base + "/" + segment)
            )
        if choice == 11:
            path = self.pick(
                [
                    "/",
                    "/api",
                    "/apis",
                    "/apis/apps",
                    "/apis/nope/v1",
                    "/api/v2",
                    "/openapi/v2",
                    "/openapi/v3/apis/nope/v1",
                    "/version/x",
                    "//api//v1",
                    "/api/v1/namespaces/fuzz/pods/f0/eviction",
                    "/api/v1/nodes/x/proxy/y",
                    "/healthz/x",
                    "/readyz?verbose",
                ]
            )
            method = self.pick(["GET", "POST", "PUT", "DELETE", "PATCH"])
            return Case(
                "http",
                f"{method} {path}",
                self.request(method, path, good if method != "GET" else None),
            )
        if choice == 12:
            ctype = self.pick(
                [
                    "",
                    "text/plain",
                    "application/json; charset=utf-16",
                    "application/cbor",
                    "multipart/form-data; boundary=x",
                    "application/x-www-form-urlencoded",
                    ";;;",
                ]
            )
            return Case("http", f"Content-Type {ctype!r}", self.request("POST", base, good, ctype))
        if choice == 13:
            body = self.pick(
                [
                    b"",
                    b" ",
                    b"\xff\xfe{}",
                    b"{",
                    b"[]",
                    b"null",
                    b'"x"',
                    b"\x00" * 100,
                    good[:-3],
                    b'{"a":1}{"b":2}',
                    "\ufeff{}".encode(),
                ]
            )
            return Case("http", f"body {body[:12]!r}", self.request("POST", base, body))
        if choice == 14:
            return Case(
                "http",
                "body over 3 MiB",
                self.request("POST", base, b"[" + b"0," * (2 * 1024 * 1024) + b"0]"),
            )
        if choice == 15:
            old = f"GET {base} HTTP/1.0\r\nAuthorization: Bearer {token}\r\n\r\n"
            return Case("http", "HTTP/1.0", old.encode())
        head = self.head(
            "POST", base, JSON_TYPE, "Expect: 100-continue", f"Content-Length: {len(good)}"
        )
        return Case("http", "Expect: 100-continue", head + good)


CATEGORIES: dict[str, Callable[[Generator], Case]] = {
    "typed": Generator.typed,
    "strings": Generator.strings,
    "nesting": Generator.nesting,
    "query": Generator.query_params,
    "patch": Generator.patch,
    "subresource": Generator.subresource,
    "delete": Generator.delete,
    "protobuf": Generator.protobuf,
    "http": Generator.http,
}
WEIGHTS = {"typed": 30, "strings": 10, "nesting": 4, "query": 14, "patch": 18}
WEIGHTS |= {"subresource": 8, "delete": 5, "protobuf": 4, "http": 7}


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def setup_requests(token: str) -> list[bytes]:
    """Requests that give the cases something to hit: the namespace and valid objects."""
    gen = Generator(0)
    gen.token = token
    out = [
        gen.request(
            "POST", "/api/v1/namespaces", encode_json(valid_object("namespaces", NAMESPACE))
        )
    ]
    for plural in PLURALS:
        for name in NAMES[:3]:
            obj = valid_object(plural, item_name(plural, name))
            out.append(gen.request("POST", collection_path(plural), encode_json(obj)))
    return out


def generate(seed: int, count: int, token: str) -> Iterator[Case]:
    """`count` cases, the same for the same seed (the token is only copied into requests)."""
    gen = Generator(seed)
    gen.token = token
    names = sorted(WEIGHTS)
    weights = [WEIGHTS[n] for n in names]
    for _ in range(count):
        category = gen.rng.choices(names, weights)[0]
        yield CATEGORIES[category](gen)


# --- the raw client ------------------------------------------------------------------------------


@dataclass(slots=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    streamed: bool  # a chunked response we hung up on after WATCH_WINDOW (a live watch)


class _Collector(asyncio.Protocol):
    """Keeps every byte the server sent, even when it then resets the connection (a server
    that refuses a request mid-upload closes with unread data: the kernel sends RST, and a
    stream reader would drop the answer that had already arrived)."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.closed = False
        self.changed = asyncio.Event()

    def data_received(self, data: bytes) -> None:
        self.data += data
        self.changed.set()

    def eof_received(self) -> bool:
        self.closed = True
        self.changed.set()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.changed.set()


def _parse(data: bytes, closed: bool, head_only: bool) -> tuple[Answer | None, bool]:
    """(answer so far, complete?) from the bytes received."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None, closed
    lines = data[:end].decode("latin-1").split("\r\n")
    try:
        status = int(lines[0].split(" ", 2)[1])
    except (IndexError, ValueError):
        return None, True
    if status == 100:  # Expect: 100-continue; the real answer follows
        return _parse(data[end + 4 :], closed, head_only)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    rest = bytes(data[end + 4 :])
    if head_only:
        return Answer(status, headers, b"", False), True
    if "chunked" in headers.get("transfer-encoding", ""):
        body, done = _dechunk(rest)
        return Answer(status, headers, body, not (done or closed)), done or closed
    if "content-length" in headers:
        length = int(headers["content-length"])
        if len(rest) >= length:
            return Answer(status, headers, rest[:length], False), True
        return (Answer(status, headers, rest, False) if closed else None), closed
    return Answer(status, headers, rest, False), closed


def _dechunk(data: bytes) -> tuple[bytes, bool]:
    out = bytearray()
    pos = 0
    while True:
        line_end = data.find(b"\r\n", pos)
        if line_end < 0:
            return bytes(out), False
        try:
            size = int(data[pos:line_end].split(b";")[0].strip(), 16)
        except ValueError:
            return bytes(out), True
        if size == 0:
            return bytes(out), True
        if len(data) < line_end + 2 + size + 2:
            return bytes(out), False
        out += data[line_end + 2 : line_end + 2 + size]
        pos = line_end + 2 + size + 2


async def send(
    host: str, port: int, data: bytes, ssl_context: ssl.SSLContext | None
) -> Answer | None:
    """Send `data` on a fresh connection and read one answer (None: no answer at all). A
    chunked answer still streaming after `WATCH_WINDOW` (a live watch) is cut there."""
    loop = asyncio.get_running_loop()
    transport, collector = await loop.create_connection(_Collector, host, port, ssl=ssl_context)
    try:
        transport.write(data)
        deadline = loop.time() + ANSWER_TIMEOUT
        streaming_until: float | None = None
        head_only = data.startswith(b"HEAD ")  # a HEAD answer has no body
        while True:
            answer, complete = _parse(bytes(collector.data), collector.closed, head_only)
            if complete:
                return answer
            now = loop.time()
            if answer is not None and answer.streamed and streaming_until is None:
                streaming_until = now + WATCH_WINDOW
            limit = streaming_until if streaming_until is not None else deadline
            if now >= limit:
                return answer if streaming_until is not None else None
            collector.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(collector.changed.wait(), limit - now)
    finally:
        transport.abort()


# --- judging answers ---------------------------------------------------------------------------


def _status_problem(body: bytes, code: int) -> str | None:
    try:
        status = json.loads(body)
    except ValueError:
        return f"error body is not JSON: {body[:120]!r}"
    if not isinstance(status, dict) or status.get("kind") != "Status":
        return f"error body is not a Status: {body[:120]!r}"
    if status.get("code") != code:
        return f"Status code {status.get('code')} != HTTP {code}"
    return None


def problems_of(answer: Answer | None) -> list[str]:
    """What is wrong with one answer (empty: it is fine)."""
    if answer is None:
        return ["no answer"]
    problems = []
    if answer.status >= 500:
        problems.append(f"HTTP {answer.status}: {answer.body[:300]!r}")
    if answer.status >= 400 and answer.body:  # (a HEAD answer has no body to judge)
        problem = _status_problem(answer.body, answer.status)
        if problem:
            problems.append(problem)
    elif "chunked" in answer.headers.get("transfer-encoding", "") and answer.status == 200:
        lines = [line for line in answer.body.split(b"\n") if line.strip()]
        if answer.streamed and lines and not answer.body.endswith(b"\n"):
            lines = lines[:-1]  # we hung up mid-event
        for line in lines:
            try:
                event = json.loads(line)
            except ValueError:
                problems.append(f"watch line is not JSON: {line[:120]!r}")
                continue
            if event.get("type") == "ERROR":
                obj = event.get("object") or {}
                if obj.get("kind") != "Status" or int(obj.get("code") or 0) >= 500:
                    problems.append(f"bad ERROR event: {line[:200]!r}")
    return problems


# --- running -----------------------------------------------------------------------------------


@dataclass(slots=True)
class Problem:
    case: Case
    problems: list[str]


@dataclass(slots=True)
class Report:
    cases: int = 0
    by_category: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    problems: list[Problem] = field(default_factory=list)
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    rss_samples: list[int] = field(default_factory=list)
    seconds: float = 0.0
    problem_count: int = 0

    @property
    def server_errors(self) -> int:
        return sum(c["5xx"] for c in self.by_category.values())

    def latency(self, category: str, q: float) -> float:
        values = sorted(self.latencies[category])
        if not values:
            return 0.0
        return values[min(len(values) - 1, int(q * len(values)))]

    def median(self, category: str) -> float:
        values = self.latencies[category]
        return statistics.median(values) if values else 0.0


def _status_class(answer: Answer | None) -> str:
    if answer is None:
        return "none"
    return f"{answer.status // 100}xx"


async def run(
    host: str,
    port: int,
    ssl_context: ssl.SSLContext | None,
    cases: Iterator[Case],
    *,
    concurrency: int = 4,
    rss: Callable[[], int] | None = None,
    rss_every: int = 200,
    max_problems: int = 50,
) -> Report:
    """Send every case (`concurrency` at a time) and judge each answer."""
    report = Report()
    started = time.monotonic()
    lock = asyncio.Lock()

    async def worker() -> None:
        while True:
            async with lock:
                case = next(cases, None)
                if case is None:
                    return
                report.cases += 1
                if rss is not None and report.cases % rss_every == 1:
                    report.rss_samples.append(rss())
            begin = time.monotonic()
            try:
                answer = await send(host, port, case.request, ssl_context)
            except (OSError, TimeoutError) as exc:
                answer = None
                found = [f"connection failed: {type(exc).__name__}: {exc}"]
            else:
                found = problems_of(answer)
            report.latencies[case.category].append(time.monotonic() - begin)
            report.by_category[case.category][_status_class(answer)] += 1
            if found:
                report.problem_count += 1
                if len(report.problems) < max_problems:
                    report.problems.append(Problem(case, found))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    if rss is not None:
        report.rss_samples.append(rss())
    report.seconds = time.monotonic() - started
    return report


def describe(problem: Problem) -> str:
    return (
        f"[{problem.case.category}] {problem.case.what} ({problem.case.request_line}): "
        + "; ".join(problem.problems)
    )


def resident_bytes(pid: int) -> int:
    """Resident memory of a process (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


async def campaign(server: ServerProcess, seed: int, count: int, *, concurrency: int = 4) -> Report:
    """A whole fuzzing run against a started server: create the objects the cases aim at,
    send `count` cases from `seed` (sampling the server's memory), and check the server still
    answers `/readyz` afterwards."""
    host, port, ssl_context, token = "127.0.0.1", server.port, server.ssl_context(), server.token
    pid = server.pid
    assert pid is not None, "the server is not started"
    for data in setup_requests(token):
        answer = await send(host, port, data, ssl_context)
        if answer is None or (answer.status >= 300 and answer.status != 409):
            raise RuntimeError(f"setting up the fuzz targets failed: {answer}")
    report = await run(
        host,
        port,
        ssl_context,
        generate(seed, count, token),
        concurrency=concurrency,
        rss=lambda: resident_bytes(pid),
    )
    ready = await send(
        host, port, b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", ssl_context
    )
    if ready is None or ready.status != 200:
        report.problem_count += 1
        report.problems.append(
            Problem(Case("readyz", "after the run", b"GET /readyz"), [f"not ready: {ready}"])
        )
    return report
