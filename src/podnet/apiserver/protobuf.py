"""Decoding the Kubernetes protobuf request bodies kubectl's typed commands send.

What belongs here: the `k8s\\x00` envelope (`runtime.Unknown` with a TypeMeta and the raw
object), a protobuf wire-format reader, and field tables for the objects kubectl 1.32 creates
with protobuf — `kubectl create namespace|configmap|secret|serviceaccount|deployment|service|
job|cronjob|role|clusterrole|rolebinding|clusterrolebinding|token`, `kubectl auth whoami|can-i`
(and `create job --from=cronjob/x`, whose template the server defaulted).
(`create -f`, `apply`, `run`, `expose`, `patch`, `scale`, … send JSON and never come here.)
Pure: bytes in, a JSON-shaped dict out.

Invariants:
- Field numbers are upstream's (k8s.io/api `generated.proto`, apimachinery `meta/v1`), for the
  fields listed in `SCHEMAS`; JSON names are upstream's JSON tags.
- Zero values of non-pointer fields are dropped (the Go encoder writes every string/int/bool
  field, set or not; upstream's JSON omits them), pointer fields (`replicas`, `immutable`, …)
  keep zeros because there zero means something.
- A field this table does not know is refused (415) when it carries a value — never decoded
  into the wrong place or silently dropped — with a message telling the user to send YAML/JSON
  (`kubectl create ... --dry-run=client -o yaml | kubectl create -f -`). Status is skipped:
  the registry resets status on create anyway.
"""

from __future__ import annotations

import base64
import datetime as dt
from dataclasses import dataclass
from typing import Any

from podnet.api.errors import ApiError, unsupported_media_type
from podnet.api.meta import rfc3339

Obj = dict[str, Any]

MAGIC = b"k8s\x00"
CONTENT_TYPE = "application/vnd.kubernetes.protobuf"


@dataclass(frozen=True, slots=True)
class Field:
    name: str
    # str, int, ptrint, bool, ptrbool, bytes, msg, map, bytesmap, time, intstr, skip
    kind: str
    message: str = ""  # message name for kind "msg" (and map values that are messages)
    repeated: bool = False


def _f(name: str, kind: str = "str", message: str = "", repeated: bool = False) -> Field:
    return Field(name, kind, message, repeated)


SCHEMAS: dict[str, dict[int, Field]] = {
    "Unknown": {
        1: _f("typeMeta", "msg", "TypeMeta"),
        2: _f("raw", "bytes"),
        3: _f("contentEncoding"),
        4: _f("contentType"),
    },
    "TypeMeta": {1: _f("apiVersion"), 2: _f("kind")},
    "ObjectMeta": {
        1: _f("name"),
        2: _f("generateName"),
        3: _f("namespace"),
        4: _f("selfLink"),
        5: _f("uid"),
        6: _f("resourceVersion"),
        7: _f("generation", "int"),
        8: _f("creationTimestamp", "time"),
        9: _f("deletionTimestamp", "time"),
        10: _f("deletionGracePeriodSeconds", "ptrint"),
        11: _f("labels", "map"),
        12: _f("annotations", "map"),
        13: _f("ownerReferences", "msg", "OwnerReference", repeated=True),
        14: _f("finalizers", repeated=True),
        17: _f("managedFields", "skip"),
    },
    "OwnerReference": {
        1: _f("kind"),
        3: _f("name"),
        4: _f("uid"),
        5: _f("apiVersion"),
        6: _f("controller", "ptrbool"),
        7: _f("blockOwnerDeletion", "ptrbool"),
    },
    "ObjectReference": {
        1: _f("kind"),
        2: _f("namespace"),
        3: _f("name"),
        4: _f("uid"),
        5: _f("apiVersion"),
        6: _f("resourceVersion"),
        7: _f("fieldPath"),
    },
    "LocalObjectReference": {1: _f("name")},
    "Namespace": {
        1: _f("metadata", "msg", "ObjectMeta"),
        2: _f("spec", "msg", "NamespaceSpec"),
        3: _f("status", "skip"),
    },
    "NamespaceSpec": {1: _f("finalizers", repeated=True)},
    "ConfigMap": {
        1: _f("metadata", "msg", "ObjectMeta"),
        2: _f("data", "map"),
        3: _f("binaryData", "bytesmap"),
        4: _f("immutable", "ptrbool"),
    },
    "Secret": {
        1: _f("metadata", "msg", "ObjectMeta"),
        2: _f("data", "bytesmap"),
        3: _f("type"),
        4: _f("stringData", "map"),
        5: _f("immutable", "ptrbool"),
    },
    "ServiceAccount": {
        1: _f("metadata", "msg", "ObjectMeta"),
        2: _f("secrets", "msg", "ObjectReference", repeated=True),
        3: _f("imagePullSecrets", "msg", "LocalObjectReference", repeated=True),
        4: _f("automountServiceAccountToken", "ptrbool"),
    },
    "Deployment": {
        1: _f("metadata", "msg", "ObjectMeta"),
        2: _f("spec", "msg", "DeploymentSpec"),
        3: _f("status", "skip"),
    },
    "DeploymentSpec": {
        1: _f("replicas", "ptrint"),
        2: _f("selector", "msg", "LabelSelector"),
        3: _f("template", "msg", "PodTemplateSpec"),
        4: _f("strategy", "msg", "Strategy"),
        5: _f("minReadySeconds", "int"),
        6: _f("revisionHistoryLimit", "ptrint"),
        7: _f("paused", "bool"),
        9: _f("progressDeadlineSeconds", "ptrint"),
    },
    "Job": {
        1: _f("metadata", "msg", "ObjectMeta"),
        2: _f("spec", "msg", "JobSpec"),
        3: _f("status", "skip"),
    },
    "JobSpec": {
        1: _f("parallelism", "ptrint"),
        2: _f("completions", "ptrint"),
        3: _f("activeDeadlineSeconds", "ptrint"),
        4: _f("selector", "msg", "LabelSelector"),
        5: _f("manualSelector", "ptrbool"),
        6: _f("template", "msg", "PodTemplateSpec"),
        7: _f("backoffLimit", "ptrint"),
        8: _f("ttlSecondsAfterFinished", "ptrint"),
        9: _f("completionMode"),
        10: _f("suspend", "ptrbool"),
        14: _f("podReplacementPolicy"),
    },
    "CronJob": {
        1: _f("metadata", "msg", "ObjectMeta"),
        2: _f("spec", "msg", "CronJobSpec"),
        3: _f("status", "skip"),
    },
    "CronJobSpec": {
        1: _f("schedule"),
        2: _f("startingDeadlineSeconds", "ptrint"),
        3: _f("concurrencyPolicy"),
        4: _f("suspend", "ptrbool"),
        5: _f("jobTemplate", "msg", "JobTemplateSpec"),
        6: _f("successfulJobsHistoryLimit", "ptrint"),
        7: _f("failedJobsHistoryLimit", "ptrint"),
        8: _f("timeZone"),
    },
    "JobTemplateSpec": {1: _f("metadata", "msg", "ObjectMeta"), 2: _f("spec", "msg", "JobSpec")},
    "Strategy": {1: _f("type"), 2: _f("rollingUpdate", "msg", "RollingUpdate")},
    "RollingUpdate": {1: _f("maxUnavailable", "intstr"), 2: _f("maxSurge", "intstr")},
    # rbac.authorization.k8s.io/v1 (kubectl create role|clusterrole|rolebinding|
    # clusterrolebinding)
    "Role": {1: _f("metadata", "msg", "ObjectMeta"), 2: _f("rules", "msg", "PolicyRule", True)},
    "ClusterRole": {
        1: _f("metadata", "msg", "ObjectMeta"),
        2: _f("rules", "msg", "PolicyRule", repeated=True),
        3: _f("aggregationRule", "msg", "AggregationRule"),
    },
    "AggregationRule": {1: _f("clusterRoleSelectors", "msg", "LabelSelector", repeated=True)},
    "PolicyRule": {
        1: _f("verbs", repeated=True),
        2: _f("apiGroups", repeated=True),
        3: _f("resources", repeated=True),
        4: _f("resourceNames", repeated=True),
        5: _f("nonResourceURLs", repeated=True),
    },
    "RoleBinding": {
        1: _f("metadata", "msg", "ObjectMeta"),
        2: _f("subjects", "msg", "Subject", repeated=True),
        3: _f("roleRef", "msg", "RoleRef"),
    },
    "ClusterRoleBinding": {
        1: _f("metadata", "msg", "ObjectMeta"),
        2: _f("subjects", "msg", "Subject", repeated=True),
        3: _f("roleRef", "msg", "RoleRef"),
    },
    "Subject": {1: _f("kind"), 2: _f("apiGroup"), 3: _f("name"), 4: _f("namespace")},
    "RoleRef": {1: _f("apiGroup"), 2: _f("kind"), 3: _f("name")},
    # authentication.k8s.io/v1 and authorization.k8s.io/v1: kubectl auth whoami|can-i,
    # kubectl create token
    "SelfSubjectReview": {1: _f("metadata", "msg", "ObjectMeta"), 2: _f("status", "skip")},
    "TokenRequest": {
        1: _f("metadata", "msg", "ObjectMeta"),
        2: _f("spec", "msg", "TokenRequestSpec"),
        3: _f("status", "skip"),
    },
    "TokenRequestSpec": {
        1: _f("audiences", repeated=True),
        3: _f("boundObjectRef", "msg", "BoundObjectReference"),
        4: _f("expirationSeconds", "ptrint"),
    },
    "BoundObjectReference": {1: _f("kind"), 2: _f("apiVersion"), 3: _f("name"), 4: _f("uid")},
    "SelfSubjectAccessReview": {
        1: _f("metadata", "msg", "ObjectMeta"),
        2: _f("spec", "msg", "SelfSubjectAccessReviewSpec"),
        3: _f("status", "skip"),
    },
    "SelfSubjectAccessReviewSpec": {
        1: _f("resourceAttributes", "msg", "ResourceAttributes"),
        2: _f("nonResourceAttributes", "msg", "NonResourceAttributes"),
    },
    "ResourceAttributes": {
        1: _f("namespace"),
        2: _f("verb"),
        3: _f("group"),
        4: _f("version"),
        5: _f("resource"),
        6: _f("subresource"),
        7: _f("name"),
    },
    "NonResourceAttributes": {1: _f("path"), 2: _f("verb")},
    "SelfSubjectRulesReview": {
        1: _f("metadata", "msg", "ObjectMeta"),
        2: _f("spec", "msg", "SelfSubjectRulesReviewSpec"),
        3: _f("status", "skip"),
    },
    "SelfSubjectRulesReviewSpec": {1: _f("namespace")},
    "LabelSelector": {
        1: _f("matchLabels", "map"),
        2: _f("matchExpressions", "msg", "LabelSelectorRequirement", repeated=True),
    },
    "LabelSelectorRequirement": {1: _f("key"), 2: _f("operator"), 3: _f("values", repeated=True)},
    "PodTemplateSpec": {1: _f("metadata", "msg", "ObjectMeta"), 2: _f("spec", "msg", "PodSpec")},
    "PodSpec": {
        2: _f("containers", "msg", "Container", repeated=True),
        3: _f("restartPolicy"),
        4: _f("terminationGracePeriodSeconds", "ptrint"),
        5: _f("activeDeadlineSeconds", "ptrint"),
        6: _f("dnsPolicy"),
        7: _f("nodeSelector", "map"),
        8: _f("serviceAccountName"),
        9: _f("serviceAccount"),
        10: _f("nodeName"),
        11: _f("hostNetwork", "bool"),
        12: _f("hostPID", "bool"),
        13: _f("hostIPC", "bool"),
        16: _f("hostname"),
        17: _f("subdomain"),
        19: _f("schedulerName"),
        20: _f("initContainers", "msg", "Container", repeated=True),
        24: _f("priorityClassName"),
        30: _f("enableServiceLinks", "ptrbool"),  # a server-defaulted template carries it
    },
    "Container": {
        1: _f("name"),
        2: _f("image"),
        3: _f("command", repeated=True),
        4: _f("args", repeated=True),
        5: _f("workingDir"),
        6: _f("ports", "msg", "ContainerPort", repeated=True),
        7: _f("env", "msg", "EnvVar", repeated=True),
        8: _f("resources", "msg", "ResourceRequirements"),
        13: _f("terminationMessagePath"),
        14: _f("imagePullPolicy"),
        16: _f("stdin", "bool"),
        17: _f("stdinOnce", "bool"),
        18: _f("tty", "bool"),
        20: _f("terminationMessagePolicy"),
    },
    "ContainerPort": {
        1: _f("name"),
        2: _f("hostPort", "int"),
        3: _f("containerPort", "int"),
        4: _f("protocol"),
        5: _f("hostIP"),
    },
    "EnvVar": {1: _f("name"), 2: _f("value")},
    "ResourceRequirements": {
        1: _f("limits", "msg", "Quantity", repeated=False),
        2: _f("requests", "msg", "Quantity", repeated=False),
    },
    "Service": {
        1: _f("metadata", "msg", "ObjectMeta"),
        2: _f("spec", "msg", "ServiceSpec"),
        3: _f("status", "skip"),
    },
    "ServiceSpec": {
        1: _f("ports", "msg", "ServicePort", repeated=True),
        2: _f("selector", "map"),
        3: _f("clusterIP"),
        4: _f("type"),
        5: _f("externalIPs", repeated=True),
        7: _f("sessionAffinity"),
        8: _f("loadBalancerIP"),
        9: _f("loadBalancerSourceRanges", repeated=True),
        10: _f("externalName"),
        11: _f("externalTrafficPolicy"),
        12: _f("healthCheckNodePort", "int"),
        13: _f("publishNotReadyAddresses", "bool"),
    },
    "ServicePort": {
        1: _f("name"),
        2: _f("protocol"),
        3: _f("port", "int"),
        4: _f("targetPort", "intstr"),
        5: _f("nodePort", "int"),
        6: _f("appProtocol"),
    },
}

# resource quantities are maps of name -> Quantity{string}; decoded specially
_QUANTITY_MAPS = {("ResourceRequirements", 1), ("ResourceRequirements", 2)}

TOP_LEVEL = {
    ("v1", "Namespace"),
    ("v1", "ConfigMap"),
    ("v1", "Secret"),
    ("v1", "ServiceAccount"),
    ("apps/v1", "Deployment"),
    ("v1", "Service"),
    ("batch/v1", "Job"),
    ("batch/v1", "CronJob"),
    ("rbac.authorization.k8s.io/v1", "Role"),
    ("rbac.authorization.k8s.io/v1", "ClusterRole"),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"),
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"),
    ("authentication.k8s.io/v1", "SelfSubjectReview"),
    ("authentication.k8s.io/v1", "TokenRequest"),
    ("authorization.k8s.io/v1", "SelfSubjectAccessReview"),
    ("authorization.k8s.io/v1", "SelfSubjectRulesReview"),
}


def _hint() -> str:
    return (
        "send the object as YAML or JSON instead, e.g. `kubectl create ... --dry-run=client "
        "-o yaml | kubectl create -f -`"
    )


class _Reader:
    def __init__(self, data: object) -> None:
        if not isinstance(data, bytes):  # a message or map entry sent with a scalar wire type
            raise unsupported_media_type(
                "malformed protobuf body (expected an embedded message); " + _hint()
            )
        self.data = data
        self.pos = 0

    def done(self) -> bool:
        return self.pos >= len(self.data)

    def varint(self) -> int:
        shift = result = 0
        while True:
            if self.pos >= len(self.data):
                raise _truncated()
            byte = self.data[self.pos]
            self.pos += 1
            result |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return result
            shift += 7
            if shift > 70:
                raise _truncated()

    def chunk(self, length: int) -> bytes:
        if self.pos + length > len(self.data):
            raise _truncated()
        out = self.data[self.pos : self.pos + length]
        self.pos += length
        return out

    def fields(self) -> list[tuple[int, int, Any]]:
        """(field number, wire type, value): value is an int (varint/fixed) or bytes."""
        out: list[tuple[int, int, Any]] = []
        while not self.done():
            key = self.varint()
            number, wire = key >> 3, key & 7
            value: Any
            if wire == 0:
                value = self.varint()
            elif wire == 2:
                value = self.chunk(self.varint())
            elif wire == 1:
                value = int.from_bytes(self.chunk(8), "little")
            elif wire == 5:
                value = int.from_bytes(self.chunk(4), "little")
            else:
                raise unsupported_media_type(
                    f"malformed protobuf body (wire type {wire}); " + _hint()
                )
            out.append((number, wire, value))
        return out


def _truncated() -> ApiError:
    return unsupported_media_type("malformed protobuf body (truncated); " + _hint())


def _signed(value: object) -> int:
    if not isinstance(value, int):  # a number sent with the length-delimited wire type
        raise unsupported_media_type("malformed protobuf body (expected a number); " + _hint())
    return value - (1 << 64) if value >= 1 << 63 else value


def _is_empty(value: Any) -> bool:
    return value in (0, b"")


def _text(value: Any) -> str:
    if not isinstance(value, bytes):
        raise unsupported_media_type("malformed protobuf body (expected a string); " + _hint())
    try:
        return value.decode()
    except UnicodeDecodeError:
        raise unsupported_media_type(
            "malformed protobuf body (a string is not UTF-8); " + _hint()
        ) from None


def _map_entry(value: bytes) -> tuple[str, bytes]:
    key, val = "", b""
    for number, _, item in _Reader(value).fields():
        if number == 1:
            key = _text(item)
        elif number == 2:
            if not isinstance(item, bytes):
                raise unsupported_media_type(
                    "malformed protobuf body (a map value is not bytes); " + _hint()
                )
            val = item
    return key, val


_MIN_SECONDS = int(dt.datetime(1, 1, 1, tzinfo=dt.UTC).timestamp())
_MAX_SECONDS = int(dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=dt.UTC).timestamp())


def _time(value: bytes) -> str | None:
    seconds = nanos = 0
    for number, _, item in _Reader(value).fields():
        if number == 1:
            seconds = _signed(item)
        elif number == 2:
            nanos = item
    if not seconds and not nanos:
        return None
    if not _MIN_SECONDS <= seconds <= _MAX_SECONDS:
        raise unsupported_media_type(
            f"malformed protobuf body (a time {seconds}s from 1970 is outside years 1-9999); "
            + _hint()
        )
    return rfc3339(dt.datetime.fromtimestamp(seconds, dt.UTC))


def _int_or_string(value: bytes) -> int | str:
    kind, int_val, str_val = 0, 0, ""
    for number, _, item in _Reader(value).fields():
        if number == 1:
            kind = item
        elif number == 2:
            int_val = _signed(item)
        elif number == 3:
            str_val = _text(item)
    return str_val if kind == 1 else int_val


def decode_message(data: bytes, message: str) -> Obj:
    schema = SCHEMAS[message]
    out: Obj = {}
    for number, _, value in _Reader(data).fields():
        spec = schema.get(number)
        if spec is None:
            if _is_empty(value):
                continue
            raise unsupported_media_type(
                f"podnet cannot decode field {number} of {message} from protobuf; " + _hint()
            )
        if spec.kind == "skip":
            continue
        if (message, number) in _QUANTITY_MAPS:
            key, raw = _map_entry(value)
            quantity = "".join(_text(v) for n, _, v in _Reader(raw).fields() if n == 1)
            out.setdefault(spec.name, {})[key] = quantity
            continue
        decoded = _decode_value(spec, value)
        if decoded is _DROP:
            continue
        if spec.kind in ("map", "bytesmap"):
            key, val = decoded
            out.setdefault(spec.name, {})[key] = val
        elif spec.repeated:
            out.setdefault(spec.name, []).append(decoded)
        else:
            out[spec.name] = decoded
    return out


_DROP = object()


def _decode_value(spec: Field, value: Any) -> Any:
    kind = spec.kind
    if kind == "str":
        text = _text(value)
        return text if text or spec.repeated else _DROP
    if kind in ("int", "ptrint"):
        number = _signed(value)
        return number if number or kind == "ptrint" else _DROP
    if kind in ("bool", "ptrbool"):
        flag = bool(value)
        return flag if flag or kind == "ptrbool" else _DROP
    if kind == "bytes":
        return value
    if kind == "map":
        key, raw = _map_entry(value)
        return key, _text(raw)
    if kind == "bytesmap":
        key, raw = _map_entry(value)
        return key, base64.b64encode(raw).decode()
    if kind == "time":
        stamp = _time(value)
        return stamp if stamp is not None else _DROP
    if kind == "intstr":
        return _int_or_string(value)
    if kind == "msg":
        decoded = decode_message(value, spec.message)
        return decoded if decoded or spec.repeated or spec.name in ("resources",) else _DROP
    raise AssertionError(f"unknown field kind {kind}")


def decode_object(data: bytes) -> Obj:
    """A `k8s\\x00`-framed protobuf body as the JSON object it encodes."""
    if not data.startswith(MAGIC):
        raise unsupported_media_type("the protobuf body lacks the k8s\\x00 envelope; " + _hint())
    envelope = decode_message(data[len(MAGIC) :], "Unknown")
    type_meta = envelope.get("typeMeta") or {}
    api_version, kind = type_meta.get("apiVersion", ""), type_meta.get("kind", "")
    if (api_version, kind) not in TOP_LEVEL:
        raise unsupported_media_type(
            f"podnet decodes protobuf only for "
            f"{', '.join(sorted(k for _, k in TOP_LEVEL))}, not {api_version} {kind}; " + _hint()
        )
    if envelope.get("contentEncoding"):
        raise unsupported_media_type("compressed protobuf bodies are not supported; " + _hint())
    obj = decode_message(envelope.get("raw", b""), kind)
    return {"apiVersion": api_version, "kind": kind, **obj}
