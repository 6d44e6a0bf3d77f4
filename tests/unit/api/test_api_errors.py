"""Status bodies byte for byte as kube-apiserver writes them (Go's json.Encoder over
metav1.Status), for the errors clients compare as text."""

from __future__ import annotations

import pytest

from podnet.api import errors
from podnet.api.errors import ApiError, Cause, go_json

# Each golden is the exact body upstream sends; the first is the one the official Python
# client's own test suite compares (create_from_yaml on an existing Service).
GOLDEN: list[tuple[str, ApiError, bytes]] = [
    (
        "already exists",
        errors.already_exists("services", "mock-2"),
        b'{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",'
        b'"message":"services \\"mock-2\\" already exists","reason":"AlreadyExists",'
        b'"details":{"name":"mock-2","kind":"services"},"code":409}\n',
    ),
    (
        "not found in a group",
        errors.not_found("deployments", "web", "apps"),
        b'{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",'
        b'"message":"deployments.apps \\"web\\" not found","reason":"NotFound",'
        b'"details":{"name":"web","group":"apps","kind":"deployments"},"code":404}\n',
    ),
    (
        "conflict",
        errors.conflict("pods", "p"),
        b'{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",'
        b'"message":"Operation cannot be fulfilled on pods \\"p\\": the object has been '
        b'modified; please apply your changes to the latest version and try again",'
        b'"reason":"Conflict","details":{"name":"p","kind":"pods"},"code":409}\n',
    ),
    (
        "invalid with causes",
        errors.invalid(
            "Deployment",
            "web",
            [
                Cause("spec.replicas", "FieldValueInvalid", "Invalid value: -1: must be >= 0"),
                Cause("spec.template.spec.containers", "FieldValueRequired", "Required value"),
            ],
            "apps",
        ),
        b'{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",'
        b'"message":"Deployment.apps \\"web\\" is invalid: [spec.replicas: Invalid value: -1: '
        b'must be \\u003e= 0, spec.template.spec.containers: Required value]",'
        b'"reason":"Invalid","details":{"name":"web","group":"apps","kind":"Deployment",'
        b'"causes":[{"reason":"FieldValueInvalid","message":"Invalid value: -1: must be '
        b'\\u003e= 0","field":"spec.replicas"},{"reason":"FieldValueRequired",'
        b'"message":"Required value","field":"spec.template.spec.containers"}]},"code":422}\n',
    ),
    (
        "forbidden on a resource",
        errors.forbidden(
            'pods is forbidden: User "system:anonymous" cannot list resource "pods" in API '
            'group "" in the namespace "default"',
            "pods",
        ),
        b'{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",'
        b'"message":"pods is forbidden: User \\"system:anonymous\\" cannot list resource '
        b'\\"pods\\" in API group \\"\\" in the namespace \\"default\\"","reason":"Forbidden",'
        b'"details":{"kind":"pods"},"code":403}\n',
    ),
    (
        "forbidden on a path: empty details are still sent",
        errors.forbidden('forbidden: User "bob" cannot get path "/metrics"'),
        b'{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",'
        b'"message":"forbidden: User \\"bob\\" cannot get path \\"/metrics\\"",'
        b'"reason":"Forbidden","details":{},"code":403}\n',
    ),
    (
        "method not supported",
        errors.method_not_supported("events", "deletecollection", "events.k8s.io"),
        b'{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",'
        b'"message":"deletecollection is not supported on resources of kind '
        b'\\"events.events.k8s.io\\"","reason":"MethodNotAllowed",'
        b'"details":{"group":"events.k8s.io","kind":"events"},"code":405}\n',
    ),
    (
        "expired",
        errors.gone("too old resource version: 5 (12)"),
        b'{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",'
        b'"message":"too old resource version: 5 (12)","reason":"Expired","code":410}\n',
    ),
    (
        "too many requests, retry after",
        errors.too_many_requests("The disruption budget web is still being processed", 10),
        b'{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",'
        b'"message":"The disruption budget web is still being processed",'
        b'"reason":"TooManyRequests","details":{"retryAfterSeconds":10},"code":429}\n',
    ),
    (
        "too many requests with a cause and no retry",
        errors.too_many_requests(
            "Cannot evict pod as it would violate the pod's disruption budget.",
            causes=[{"reason": "DisruptionBudget", "message": "needs 1 healthy pods"}],
        ),
        b'{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",'
        b'"message":"Cannot evict pod as it would violate the pod\'s disruption budget.",'
        b'"reason":"TooManyRequests","details":{"causes":[{"reason":"DisruptionBudget",'
        b'"message":"needs 1 healthy pods"}]},"code":429}\n',
    ),
    (
        "bad request: no details at all",
        errors.bad_request('strict decoding error: unknown field "spec.foo"'),
        b'{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",'
        b'"message":"strict decoding error: unknown field \\"spec.foo\\"",'
        b'"reason":"BadRequest","code":400}\n',
    ),
]


@pytest.mark.parametrize(("error", "expected"), [g[1:] for g in GOLDEN], ids=[g[0] for g in GOLDEN])
def test_status_bytes_match_upstream(error: ApiError, expected: bytes) -> None:
    assert error.status_bytes() == expected


def test_details_are_reordered_and_empty_members_dropped() -> None:
    # whatever order a constructor (or a Status read back from a server) used
    error = ApiError(
        409,
        "Conflict",
        "m",
        {"kind": "pods", "causes": [{"field": "f", "message": "x", "reason": "R"}], "name": "p"},
    )
    assert error.status_bytes().endswith(
        b'"details":{"name":"p","kind":"pods","causes":[{"reason":"R","message":"x",'
        b'"field":"f"}]},"code":409}\n'
    )


def test_round_trip_keeps_absent_and_empty_details_apart() -> None:
    for error in (errors.bad_request("x"), errors.forbidden("forbidden: y")):
        again = ApiError.from_status(error.status(), error.code)
        assert again.status_bytes() == error.status_bytes()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("<a & b>", b'"\\u003ca \\u0026 b\\u003e"\n'),
        ("caf\u00e9 \u2603", '"caf\u00e9 \u2603"\n'.encode()),  # UTF-8, not \\u escapes
        ("line\u2028sep\u2029", b'"line\\u2028sep\\u2029"\n'),
        ("tab\tnl\n\x01", b'"tab\\tnl\\n\\u0001"\n'),
        ("lone \ud800", '"lone \ufffd"\n'.encode()),  # invalid UTF-8 becomes U+FFFD
        ({"b": 1, "a": [True, None]}, b'{"b":1,"a":[true,null]}\n'),
    ],
)
def test_go_json_escapes_like_go(value: object, expected: bytes) -> None:
    assert go_json(value) == expected
