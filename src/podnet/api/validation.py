"""Shape validation of API objects, with upstream's field paths, reasons and messages.

What belongs here: `validate_name` (DESIGN contract 6: user names are checked here before any
other component sees them) and `validate(res, obj, old)` with per-kind rules for the fields
podnet uses, transcribed from k8s.io/kubernetes `pkg/apis/*/validation` (create and update).
The API server runs `defaults.apply_defaults` first (and, on update, carries allocated values
such as a Service's clusterIP over from the stored object) and turns a non-empty result into
`errors.invalid(kind, name, causes)` → 422. `unknown_fields` / `drop_unknown_fields` /
`strict_decoding_error` implement the `fieldValidation` query parameter (Strict → 400,
Warn → drop + `Warning: unknown field "<path>"` header, Ignore → drop); upstream's default when
the parameter is absent is Warn, and kubectl sends Strict.

Invariants:
- Pure and total: any JSON value in any position yields causes, never an exception. A value of
  the wrong JSON type gives one `FieldValueTypeInvalid` cause and its subtree is skipped.
- Field paths use upstream notation: `spec.containers[0].ports[1].containerPort`,
  `metadata.labels`, `data[key]`.
- Cause messages are upstream's `ErrorBody()`: `Required value`, `Invalid value: "x": detail`,
  `Unsupported value: "x": supported values: "a", "b"`, `Duplicate value: "x"`,
  `Forbidden: detail`, `Not found: "x"`, `Too long: ...`, `Too many: ...`.
- Names: Namespaces are DNS-1123 labels, Services DNS-1035 labels, everything else DNS-1123
  subdomains — upstream's per-kind rules. `validate_name` without a resource applies the
  strictest rule (DNS-1123 label).
"""

from __future__ import annotations

import base64
import binascii
import copy
import functools
import ipaddress
import json
import re
from collections.abc import Callable, Collection, Iterable, Sequence
from decimal import Decimal
from typing import Any, TypeGuard

from podnet.api import cron, meta, schema
from podnet.api.errors import ApiError, Cause
from podnet.api.interface import Obj
from podnet.api.resources import Resource
from podnet.api.selectors import LabelSelector

PORT_RANGE_ERROR = "must be between 1 and 65535, inclusive"
NON_NEGATIVE = "must be greater than or equal to 0"
MAX_CLIENT_IP_AFFINITY_SECONDS = 86400
ANNOTATIONS_MAX_BYTES = 256 * 1024
DATA_MAX_BYTES = 1024 * 1024
IMMUTABLE = "field is immutable"

# --- recording causes ----------------------------------------------------------------------


def show(value: Any) -> str:
    """A value as upstream prints it inside cause messages (Go %q for strings)."""
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _object_at(parent: Obj, key: str) -> Obj:
    """parent[key] when it is an object, else an empty one (for read-only comparisons)."""
    value = parent.get(key)
    return value if isinstance(value, dict) else {}


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


class _Causes:
    """Collects causes; the typed readers report wrong JSON types and return None for them."""

    def __init__(self) -> None:
        self.items: list[Cause] = []

    def add(self, path: str, reason: str, message: str) -> None:
        self.items.append(Cause(path, reason, message))

    def required(self, path: str, detail: str = "") -> None:
        self.add(path, "FieldValueRequired", "Required value" + (f": {detail}" if detail else ""))

    def invalid(self, path: str, value: Any, detail: str) -> None:
        self.add(path, "FieldValueInvalid", f"Invalid value: {show(value)}: {detail}")

    def not_supported(self, path: str, value: Any, supported: Iterable[str]) -> None:
        values = ", ".join(show(v) for v in supported)
        self.add(
            path,
            "FieldValueNotSupported",
            f"Unsupported value: {show(value)}: supported values: {values}",
        )

    def duplicate(self, path: str, value: Any) -> None:
        self.add(path, "FieldValueDuplicate", f"Duplicate value: {show(value)}")

    def forbidden(self, path: str, detail: str) -> None:
        self.add(path, "FieldValueForbidden", f"Forbidden: {detail}")

    def not_found(self, path: str, value: Any) -> None:
        self.add(path, "FieldValueNotFound", f"Not found: {show(value)}")

    def too_long(self, path: str, limit: int) -> None:
        self.add(path, "FieldValueTooLong", f"Too long: may not be more than {limit} bytes")

    def too_many(self, path: str, count: int, limit: int) -> None:
        self.add(path, "FieldValueTooMany", f"Too many: {count}: must have at most {limit} items")

    def wrong_type(self, path: str, value: Any, expected: str) -> None:
        self.add(
            path, "FieldValueTypeInvalid", f"Invalid value: {show(value)}: expected {expected}"
        )

    def each_invalid(self, path: str, value: Any, messages: Iterable[str]) -> None:
        for msg in messages:
            self.invalid(path, value, msg)

    # typed readers: absent/null -> None; wrong type -> cause + None

    def get_obj(self, parent: Obj, key: str, path: str) -> Obj | None:
        value = parent.get(key)
        if value is None or isinstance(value, dict):
            return value
        self.wrong_type(_join(path, key), value, "an object")
        return None

    def get_list(self, parent: Obj, key: str, path: str) -> list[Any] | None:
        value = parent.get(key)
        if value is None or isinstance(value, list):
            return value
        self.wrong_type(_join(path, key), value, "a list")
        return None

    def get_objs(self, parent: Obj, key: str, path: str) -> list[tuple[str, Obj]]:
        """The object items of list `key` with their paths; non-object items are reported."""
        items = self.get_list(parent, key, path) or []
        out: list[tuple[str, Obj]] = []
        for i, item in enumerate(items):
            item_path = f"{_join(path, key)}[{i}]"
            if isinstance(item, dict):
                out.append((item_path, item))
            else:
                self.wrong_type(item_path, item, "an object")
        return out

    def get_str(self, parent: Obj, key: str, path: str) -> str | None:
        value = parent.get(key)
        if value is None or isinstance(value, str):
            return value
        self.wrong_type(_join(path, key), value, "a string")
        return None

    def get_int(self, parent: Obj, key: str, path: str) -> int | None:
        value = parent.get(key)
        if value is None or _is_int(value):
            return value
        self.wrong_type(_join(path, key), value, "an integer")
        return None

    def get_bool(self, parent: Obj, key: str, path: str) -> bool | None:
        value = parent.get(key)
        if value is None or isinstance(value, bool):
            return value
        self.wrong_type(_join(path, key), value, "a boolean")
        return None

    def get_strings(self, parent: Obj, key: str, path: str) -> list[str] | None:
        items = self.get_list(parent, key, path)
        if items is None:
            return None
        ok = True
        for i, item in enumerate(items):
            if not isinstance(item, str):
                self.wrong_type(f"{_join(path, key)}[{i}]", item, "a string")
                ok = False
        return items if ok else None

    def get_str_map(self, parent: Obj, key: str, path: str) -> dict[str, str] | None:
        value = self.get_obj(parent, key, path)
        if value is None:
            return None
        ok = True
        for k, v in value.items():
            if not isinstance(v, str):
                self.wrong_type(f"{_join(path, key)}[{k}]", v, "a string")
                ok = False
        return value if ok else None

    def non_negative(self, parent: Obj, key: str, path: str) -> int | None:
        value = self.get_int(parent, key, path)
        if value is not None and value < 0:
            self.invalid(_join(path, key), value, NON_NEGATIVE)
        return value

    def one_of(
        self, parent: Obj, key: str, path: str, supported: Sequence[str], required: bool = False
    ) -> str | None:
        value = self.get_str(parent, key, path)
        if value is None or value == "":
            if required:
                self.required(_join(path, key))
            return value
        if value not in supported:
            self.not_supported(_join(path, key), value, supported)
        return value


# --- names ---------------------------------------------------------------------------------

NameRule = Callable[[object], list[str]]

_NAME_RULES: dict[str, NameRule] = {
    "Namespace": meta.dns1123_label_errors,
    "Service": meta.dns1035_label_errors,
    # RBAC objects and APIServices are named by path segments (`system:controller:x`)
    "Role": lambda name: path_segment_errors(name),
    "ClusterRole": lambda name: path_segment_errors(name),
    "RoleBinding": lambda name: path_segment_errors(name),
    "ClusterRoleBinding": lambda name: path_segment_errors(name),
    "APIService": lambda name: path_segment_errors(name),
}


def name_rule(res: Resource | None) -> NameRule:
    if res is None:
        return meta.dns1123_label_errors
    return _NAME_RULES.get(res.kind, meta.dns1123_subdomain_errors)


def validate_name(
    name: str, field: str = "metadata.name", res: Resource | None = None
) -> list[Cause]:
    """Causes for an invalid object name: the rule of `res`'s kind, or a DNS-1123 label."""
    c = _Causes()
    if name == "":
        c.required(field)
    else:
        c.each_invalid(field, name, name_rule(res)(name))
    return c.items


def _prefix_errors(rule: NameRule, prefix: str) -> list[str]:
    """generateName is checked with a trailing '-' masked, as upstream does."""
    masked = prefix[:-1] + "a" if prefix.endswith("-") else prefix
    return rule(masked)


# --- shared pieces -------------------------------------------------------------------------


def _labels(c: _Causes, labels: dict[str, str] | None, path: str) -> None:
    for k, v in (labels or {}).items():
        c.each_invalid(path, k, meta.qualified_name_errors(k))
        c.each_invalid(path, v, meta.label_value_errors(v))


def _validate_metadata(c: _Causes, res: Resource, obj: Obj) -> None:
    md = c.get_obj(obj, "metadata", "")
    if md is None:
        if "metadata" not in obj or obj.get("metadata") is None:
            c.required("metadata.name", "name or generateName is required")
        return
    path = "metadata"
    rule = name_rule(res)
    name = c.get_str(md, "name", path)
    generate = c.get_str(md, "generateName", path)
    if generate:
        c.each_invalid("metadata.generateName", generate, _prefix_errors(rule, generate))
    if not name and not generate:
        c.required("metadata.name", "name or generateName is required")
    elif name:
        c.each_invalid("metadata.name", name, rule(name))
    namespace = c.get_str(md, "namespace", path)
    if res.namespaced:
        if not namespace:
            c.required("metadata.namespace")
        else:
            c.each_invalid("metadata.namespace", namespace, meta.dns1123_label_errors(namespace))
    elif namespace:
        c.forbidden("metadata.namespace", "not allowed on this type")
    _labels(c, c.get_str_map(md, "labels", path), "metadata.labels")
    annotations = c.get_str_map(md, "annotations", path)
    if annotations:
        total = 0
        for k, v in annotations.items():
            c.each_invalid("metadata.annotations", k, meta.qualified_name_errors(k.lower()))
            total += len(k.encode()) + len(v.encode())
        if total > ANNOTATIONS_MAX_BYTES:
            c.too_long("metadata.annotations", ANNOTATIONS_MAX_BYTES)
    finalizers = c.get_strings(md, "finalizers", path)
    for i, fin in enumerate(finalizers or []):
        c.each_invalid(f"metadata.finalizers[{i}]", fin, meta.qualified_name_errors(fin))
    _owner_references(c, md)


def _owner_references(c: _Causes, md: Obj) -> None:
    controllers: list[str] = []
    for path, ref in c.get_objs(md, "ownerReferences", "metadata"):
        for field in ("apiVersion", "kind", "name", "uid"):
            value = c.get_str(ref, field, path)
            if not value:
                c.required(_join(path, field))
        if c.get_bool(ref, "controller", path):
            controllers.append(f"{ref.get('kind')}/{ref.get('name')}")
        c.get_bool(ref, "blockOwnerDeletion", path)
    if len(controllers) > 1:
        c.invalid(
            "metadata.ownerReferences",
            md.get("ownerReferences"),
            'Only one reference can have Controller set to true. Found "true" in '
            f"references for {' and '.join(controllers)}",
        )


def _validate_metadata_update(c: _Causes, obj: Obj, old: Obj) -> None:
    new_md, old_md = _object_at(obj, "metadata"), _object_at(old, "metadata")
    for field in ("name", "namespace", "uid", "creationTimestamp"):
        if field in ("uid", "creationTimestamp") and not new_md.get(field):
            continue  # the server fills these from the stored object
        if new_md.get(field) != old_md.get(field):
            c.invalid(f"metadata.{field}", new_md.get(field), IMMUTABLE)


def _ip_errors(value: str, family: int | None = None) -> list[str]:
    try:
        return list(_ip_problems(value, family))
    except TypeError:  # not hashable: a garbage body's list or object where an IP belongs
        return _ip_value_errors(value, family)


@functools.lru_cache(maxsize=4096)
def _ip_problems(value: str, family: int | None) -> tuple[str, ...]:
    # the same addresses come back on every write of an Endpoints, slice or pod status (an
    # `ipaddress` parse is ~8 us, seven of them per readiness change): bounded memo
    return tuple(_ip_value_errors(value, family))


def _ip_value_errors(value: str, family: int | None) -> list[str]:
    try:
        addr = ipaddress.ip_address(value)
    except ValueError:
        if family == 4:
            return ["must be a valid IPv4 address"]
        if family == 6:
            return ["must be a valid IPv6 address"]
        return ["must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"]
    if family is not None and addr.version != family:
        return [f"must be a valid IPv{family} address"]
    return []


_CIDR_ERROR = "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)"


def _cidr_errors(value: str) -> list[str]:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        return [_CIDR_ERROR]
    return [] if "/" in value else [_CIDR_ERROR]


def _port_number(c: _Causes, parent: Obj, key: str, path: str) -> None:
    """A required port number where 0 means "missing" (containerPort, grpc.port)."""
    value = c.get_int(parent, key, path)
    if value is None or value == 0:
        if value == 0 or parent.get(key) is None:
            c.required(_join(path, key))
        return
    if not 1 <= value <= 65535:
        c.invalid(_join(path, key), value, PORT_RANGE_ERROR)


_PORT_NAME_CHARSET = re.compile(r"[-a-z0-9]+")
_HAS_LETTER = re.compile(r"[a-z]")


def port_name_errors(name: str) -> list[str]:
    """IANA_SVC_NAME (upstream IsValidPortName)."""
    errs: list[str] = []
    if len(name) > 15:
        errs.append(meta.max_len_error(15))
    if not _PORT_NAME_CHARSET.fullmatch(name):
        errs.append("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)")
    if not _HAS_LETTER.search(name):
        errs.append("must contain at least one letter (a-z)")
    if "--" in name:
        errs.append("must not contain consecutive hyphens")
    if name.startswith("-") or name.endswith("-"):
        errs.append("must not begin or end with a hyphen")
    return errs


def _port_in_range(c: _Causes, parent: Obj, key: str, path: str) -> None:
    """A required port number where 0 is out of range (Service and Endpoints ports)."""
    value = c.get_int(parent, key, path)
    if value is None:
        if parent.get(key) is None:
            c.required(_join(path, key))
    elif not 1 <= value <= 65535:
        c.invalid(_join(path, key), value, PORT_RANGE_ERROR)


def _port_ref(c: _Causes, parent: Obj, key: str, path: str) -> None:
    """An int-or-string port: a number 1-65535 or an IANA service name."""
    value = parent.get(key)
    p = _join(path, key)
    if value is None:
        c.required(p)
    elif _is_int(value):
        if not 1 <= value <= 65535:
            c.invalid(p, value, PORT_RANGE_ERROR)
    elif isinstance(value, str):
        c.each_invalid(p, value, port_name_errors(value))
    else:
        c.wrong_type(p, value, "an integer or a string")


PROTOCOLS = ("SCTP", "TCP", "UDP")


def _label_selector(c: _Causes, sel: Obj, path: str) -> None:
    _labels(c, c.get_str_map(sel, "matchLabels", path), _join(path, "matchLabels"))
    for expr_path, expr in c.get_objs(sel, "matchExpressions", path):
        key = c.get_str(expr, "key", expr_path)
        if not key:
            c.required(_join(expr_path, "key"))
        else:
            c.each_invalid(_join(expr_path, "key"), key, meta.qualified_name_errors(key))
        op = c.one_of(
            expr, "operator", expr_path, ("In", "NotIn", "Exists", "DoesNotExist"), required=True
        )
        values = c.get_strings(expr, "values", expr_path)
        if op in ("In", "NotIn") and not values:
            c.required(
                _join(expr_path, "values"), "must be specified when `operator` is 'In' or 'NotIn'"
            )
        if op in ("Exists", "DoesNotExist") and values:
            c.forbidden(
                _join(expr_path, "values"),
                "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
            )
        for i, v in enumerate(values or []):
            c.each_invalid(f"{_join(expr_path, 'values')}[{i}]", v, meta.label_value_errors(v))


# --- Pod -----------------------------------------------------------------------------------

_QUANTITY = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+|[numkMGTPE]|[KMGTPE]i)?")


def _resources(c: _Causes, ctr: Obj, path: str) -> None:
    res = c.get_obj(ctr, "resources", path)
    if res is None:
        return
    rpath = _join(path, "resources")
    for section in ("limits", "requests"):
        values = c.get_obj(res, section, rpath)
        for name, qty in (values or {}).items():
            qpath = f"{_join(rpath, section)}[{name}]"
            if _is_int(qty) or isinstance(qty, float):
                qty = str(qty)
            if not isinstance(qty, str) or not _QUANTITY.fullmatch(qty):
                c.invalid(
                    qpath,
                    qty,
                    "quantities must match the regular expression "
                    "'^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'",
                )


def _probe(c: _Causes, ctr: Obj, key: str, path: str) -> None:
    probe = c.get_obj(ctr, key, path)
    if probe is None:
        return
    ppath = _join(path, key)
    handlers = [h for h in ("exec", "httpGet", "tcpSocket", "grpc") if probe.get(h) is not None]
    if not handlers:
        c.required(ppath, "must specify a handler type")
    elif len(handlers) > 1:
        c.forbidden(_join(ppath, handlers[1]), "may not specify more than 1 handler type")
    exec_ = c.get_obj(probe, "exec", ppath)
    if exec_ is not None and not c.get_strings(exec_, "command", _join(ppath, "exec")):
        c.required(_join(ppath, "exec.command"))
    http = c.get_obj(probe, "httpGet", ppath)
    if http is not None:
        hpath = _join(ppath, "httpGet")
        _port_ref(c, http, "port", hpath)
        c.get_str(http, "path", hpath)
        c.get_str(http, "host", hpath)
        c.one_of(http, "scheme", hpath, ("HTTP", "HTTPS"))
        for header_path, header in c.get_objs(http, "httpHeaders", hpath):
            if not c.get_str(header, "name", header_path):
                c.required(_join(header_path, "name"))
            c.get_str(header, "value", header_path)
    tcp = c.get_obj(probe, "tcpSocket", ppath)
    if tcp is not None:
        _port_ref(c, tcp, "port", _join(ppath, "tcpSocket"))
    grpc = c.get_obj(probe, "grpc", ppath)
    if grpc is not None:
        _port_number(c, grpc, "port", _join(ppath, "grpc"))
    for field in (
        "initialDelaySeconds",
        "timeoutSeconds",
        "periodSeconds",
        "successThreshold",
        "failureThreshold",
    ):
        c.non_negative(probe, field, ppath)
    success = c.get_int(probe, "successThreshold", ppath)
    if key in ("livenessProbe", "startupProbe") and success is not None and success != 1:
        c.invalid(_join(ppath, "successThreshold"), success, "must be 1")


# printable ASCII except '=' (upstream RelaxedEnvironmentVariableValidation, on in 1.32)
_ENV_NAME_RE = re.compile(r"[ -<>-~]+")


def _env(c: _Causes, ctr: Obj, path: str) -> None:
    for env_path, env in c.get_objs(ctr, "env", path):
        name = c.get_str(env, "name", env_path)
        if not name:
            c.required(_join(env_path, "name"))
        elif not _ENV_NAME_RE.fullmatch(name):
            c.invalid(
                _join(env_path, "name"),
                name,
                "a valid environment variable name must consist only of printable ASCII "
                "characters other than '='",
            )
        value = c.get_str(env, "value", env_path)
        value_from = c.get_obj(env, "valueFrom", env_path)
        if value_from is not None:
            sources = [
                s
                for s in ("fieldRef", "resourceFieldRef", "configMapKeyRef", "secretKeyRef")
                if value_from.get(s) is not None
            ]
            vpath = _join(env_path, "valueFrom")
            if value:
                c.invalid(vpath, "", "may not be specified when `value` is not empty")
            if not sources:
                c.required(
                    vpath,
                    "must specify one of: `fieldRef`, `resourceFieldRef`, "
                    "`configMapKeyRef` or `secretKeyRef`",
                )
            elif len(sources) > 1:
                c.invalid(vpath, "", "may not have more than one field specified at a time")
            field_ref = c.get_obj(value_from, "fieldRef", vpath)
            ref_path = _join(vpath, "fieldRef")
            if field_ref is not None and not c.get_str(field_ref, "fieldPath", ref_path):
                c.required(_join(vpath, "fieldRef.fieldPath"))
            for ref_kind in ("configMapKeyRef", "secretKeyRef"):
                ref = c.get_obj(value_from, ref_kind, vpath)
                if ref is not None and not c.get_str(ref, "key", _join(vpath, ref_kind)):
                    c.required(_join(vpath, f"{ref_kind}.key"))


def _container(c: _Causes, ctr: Obj, path: str, volumes: set[str]) -> None:
    name = c.get_str(ctr, "name", path)
    if not name:
        c.required(_join(path, "name"))
    else:
        c.each_invalid(_join(path, "name"), name, meta.dns1123_label_errors(name))
    image = c.get_str(ctr, "image", path)
    if not image:
        c.required(_join(path, "image"))
    elif image.strip() != image:
        c.invalid(_join(path, "image"), image, "must not have leading or trailing whitespace")
    c.get_strings(ctr, "command", path)
    c.get_strings(ctr, "args", path)
    c.get_str(ctr, "workingDir", path)
    c.one_of(ctr, "imagePullPolicy", path, ("Always", "IfNotPresent", "Never"))
    c.one_of(ctr, "terminationMessagePolicy", path, ("FallbackToLogsOnError", "File"))
    port_names: set[str] = set()
    for port_path, port in c.get_objs(ctr, "ports", path):
        _port_number(c, port, "containerPort", port_path)
        host_port = c.get_int(port, "hostPort", port_path)
        if host_port and not 1 <= host_port <= 65535:
            c.invalid(_join(port_path, "hostPort"), host_port, PORT_RANGE_ERROR)
        c.one_of(port, "protocol", port_path, PROTOCOLS, required=True)
        port_name = c.get_str(port, "name", port_path)
        if port_name:
            c.each_invalid(_join(port_path, "name"), port_name, port_name_errors(port_name))
            if port_name in port_names:
                c.duplicate(_join(port_path, "name"), port_name)
            port_names.add(port_name)
        host_ip = c.get_str(port, "hostIP", port_path)
        if host_ip:
            c.each_invalid(_join(port_path, "hostIP"), host_ip, _ip_errors(host_ip))
    _env(c, ctr, path)
    mount_paths: set[str] = set()
    for mount_path, mount in c.get_objs(ctr, "volumeMounts", path):
        vol = c.get_str(mount, "name", mount_path)
        if not vol:
            c.required(_join(mount_path, "name"))
        elif vol not in volumes:
            c.not_found(_join(mount_path, "name"), vol)
        target = c.get_str(mount, "mountPath", mount_path)
        if not target:
            c.required(_join(mount_path, "mountPath"))
        elif target in mount_paths:
            c.invalid(_join(mount_path, "mountPath"), target, "must be unique")
        else:
            mount_paths.add(target)
        c.get_bool(mount, "readOnly", mount_path)
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        _probe(c, ctr, probe, path)
    _resources(c, ctr, path)


_RESTART_POLICIES = ("Always", "Never", "OnFailure")
_DNS_POLICIES = ("ClusterFirst", "ClusterFirstWithHostNet", "Default", "None")
_TAINT_EFFECTS = ("NoExecute", "NoSchedule", "PreferNoSchedule")


def _tolerations(c: _Causes, spec: Obj, path: str) -> None:
    for tol_path, tol in c.get_objs(spec, "tolerations", path):
        key = c.get_str(tol, "key", tol_path)
        if key:
            c.each_invalid(_join(tol_path, "key"), key, meta.qualified_name_errors(key))
        op = c.one_of(tol, "operator", tol_path, ("Equal", "Exists"))
        value = c.get_str(tol, "value", tol_path)
        if not key and op != "Exists":
            c.invalid(
                _join(tol_path, "operator"),
                op or "",
                'operator must be Exists when `key` is empty, which means "match all '
                'values and all keys"',
            )
        if op == "Exists" and value:
            c.invalid(
                _join(tol_path, "operator"),
                value,
                "value must be empty when `operator` is 'Exists'",
            )
        effect = c.one_of(tol, "effect", tol_path, _TAINT_EFFECTS)
        seconds = c.get_int(tol, "tolerationSeconds", tol_path)
        if seconds is not None and effect != "NoExecute":
            c.invalid(
                _join(tol_path, "effect"),
                effect or "",
                "effect must be 'NoExecute' when `tolerationSeconds` is set",
            )


def _pod_spec(
    c: _Causes,
    spec: Obj,
    path: str,
    restart_policies: Sequence[str] = _RESTART_POLICIES,
    claim_volumes: Iterable[str] = (),
) -> None:
    """`claim_volumes`: names containers may mount without a volume (a StatefulSet's
    volumeClaimTemplates)."""
    volumes: set[str] = set(claim_volumes)
    for vol_path, vol in c.get_objs(spec, "volumes", path):
        name = c.get_str(vol, "name", vol_path)
        if not name:
            c.required(_join(vol_path, "name"))
            continue
        c.each_invalid(_join(vol_path, "name"), name, meta.dns1123_label_errors(name))
        if name in volumes:
            c.duplicate(_join(vol_path, "name"), name)
        volumes.add(name)
    containers = c.get_objs(spec, "containers", path)
    if spec.get("containers") in (None, []):
        c.required(_join(path, "containers"))
    names: set[str] = set()
    for ctr_path, ctr in c.get_objs(spec, "initContainers", path) + containers:
        _container(c, ctr, ctr_path, volumes)
        name = ctr.get("name")
        if isinstance(name, str) and name:
            if name in names:
                c.duplicate(_join(ctr_path, "name"), name)
            names.add(name)
    policy = c.one_of(spec, "restartPolicy", path, _RESTART_POLICIES, required=True)
    if policy and policy in _RESTART_POLICIES and policy not in restart_policies:
        c.not_supported(_join(path, "restartPolicy"), policy, restart_policies)
    c.one_of(spec, "dnsPolicy", path, _DNS_POLICIES)
    c.non_negative(spec, "terminationGracePeriodSeconds", path)
    deadline = c.get_int(spec, "activeDeadlineSeconds", path)
    if deadline is not None and not 1 <= deadline <= 2**31 - 1:
        c.invalid(
            _join(path, "activeDeadlineSeconds"),
            deadline,
            "must be between 1 and 2147483647, inclusive",
        )
    for field in ("nodeName", "serviceAccountName", "hostname", "subdomain"):
        value = c.get_str(spec, field, path)
        if value:
            rule = (
                meta.dns1123_subdomain_errors
                if field in ("nodeName", "serviceAccountName")
                else meta.dns1123_label_errors
            )
            c.each_invalid(_join(path, field), value, rule(value))
    c.get_str(spec, "schedulerName", path)
    for field in ("hostNetwork", "enableServiceLinks", "automountServiceAccountToken"):
        c.get_bool(spec, field, path)
    _labels(c, c.get_str_map(spec, "nodeSelector", path), _join(path, "nodeSelector"))
    _tolerations(c, spec, path)
    for secret_path, secret in c.get_objs(spec, "imagePullSecrets", path):
        c.get_str(secret, "name", secret_path)


def _validate_pod(c: _Causes, pod: Obj, old: Obj | None = None) -> None:
    spec = c.get_obj(pod, "spec", "")
    if spec is None:
        if pod.get("spec") is None:
            c.required("spec.containers")
        return
    # an update that leaves the spec as stored (every kubelet status write) does not walk it
    # again: it was valid when written, and upstream's status update (ValidatePodStatusUpdate)
    # does not look at the spec at all (a third of a status write's validation here)
    if old is None or spec != old.get("spec"):
        _pod_spec(c, spec, "spec")
    status = c.get_obj(pod, "status", "")
    if status is not None:
        c.one_of(
            status, "phase", "status", ("Failed", "Pending", "Running", "Succeeded", "Unknown")
        )
        pod_ip = c.get_str(status, "podIP", "status")
        if pod_ip:
            c.each_invalid("status.podIP", pod_ip, _ip_errors(pod_ip))


_POD_UPDATABLE = (
    "`spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,"
    "`spec.tolerations` (only additions to existing tolerations),"
    "`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously "
    "negative)"
)


def _diff_paths(a: Any, b: Any, path: str) -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: list[str] = []
        for k in sorted(set(a) | set(b), key=str):
            out += _diff_paths(a.get(k), b.get(k), _join(path, str(k)))
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        out = []
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            out += _diff_paths(x, y, f"{path}[{i}]")
        return out
    return [] if a == b else [path]


def _validate_pod_update(c: _Causes, pod: Obj, old: Obj) -> None:
    new_spec, old_spec = pod.get("spec"), old.get("spec")
    if not isinstance(new_spec, dict) or not isinstance(old_spec, dict):
        return
    if new_spec == old_spec:
        return  # nothing below can object to an unchanged spec (every status write)
    munged = copy.deepcopy(new_spec)
    for field in ("containers", "initContainers"):
        new_list, old_list = munged.get(field), old_spec.get(field)
        if (
            isinstance(new_list, list)
            and isinstance(old_list, list)
            and len(new_list) == len(old_list)
        ):
            for new_ctr, old_ctr in zip(new_list, old_list, strict=True):
                if isinstance(new_ctr, dict) and isinstance(old_ctr, dict):
                    if "image" in old_ctr:
                        new_ctr["image"] = old_ctr["image"]
                    else:
                        new_ctr.pop("image", None)
    new_deadline, old_deadline = (
        new_spec.get("activeDeadlineSeconds"),
        old_spec.get("activeDeadlineSeconds"),
    )
    if _is_int(old_deadline):
        if new_deadline is None:
            c.invalid(
                "spec.activeDeadlineSeconds",
                None,
                "must not update from a positive integer to nil value",
            )
        elif _is_int(new_deadline) and new_deadline > old_deadline:
            c.invalid(
                "spec.activeDeadlineSeconds",
                new_deadline,
                "must be less than or equal to previous value",
            )
    _set_or_drop(munged, "activeDeadlineSeconds", old_spec)
    old_tols = old_spec.get("tolerations") or []
    new_tols = new_spec.get("tolerations") or []
    if isinstance(old_tols, list) and isinstance(new_tols, list):
        missing = [t for t in old_tols if t not in new_tols]
        if missing:
            c.forbidden(
                "spec.tolerations",
                f"existing toleration can not be modified except its tolerationSeconds: "
                f"{show(missing[0])}",
            )
        _set_or_drop(munged, "tolerations", old_spec)
    old_grace = old_spec.get("terminationGracePeriodSeconds")
    if _is_int(old_grace) and old_grace < 0 and new_spec.get("terminationGracePeriodSeconds") == 1:
        munged["terminationGracePeriodSeconds"] = old_grace
    changed = _diff_paths(old_spec, munged, "spec")
    if changed:
        c.forbidden(
            "spec",
            f"pod updates may not change fields other than {_POD_UPDATABLE}\n"
            f"changed: {', '.join(changed)}",
        )


def _set_or_drop(target: Obj, key: str, source: Obj) -> None:
    if key in source:
        target[key] = copy.deepcopy(source[key])
    else:
        target.pop(key, None)


# --- Service -------------------------------------------------------------------------------

_SERVICE_TYPES = ("ClusterIP", "ExternalName", "LoadBalancer", "NodePort")


def _validate_service(c: _Causes, svc: Obj) -> None:
    spec = c.get_obj(svc, "spec", "")
    if spec is None:
        if svc.get("spec") is None:
            c.required("spec.ports")
        return
    p = "spec"
    svc_type = c.one_of(spec, "type", p, _SERVICE_TYPES, required=True)
    cluster_ip = c.get_str(spec, "clusterIP", p)
    headless = cluster_ip == "None"
    if cluster_ip and not headless:
        c.each_invalid("spec.clusterIP", cluster_ip, _ip_errors(cluster_ip))
    cluster_ips = c.get_strings(spec, "clusterIPs", p)
    if cluster_ips and cluster_ip and cluster_ips[0] != cluster_ip:
        c.invalid("spec.clusterIPs[0]", cluster_ips[0], "must match `clusterIP` if specified")
    if headless and svc_type in ("NodePort", "LoadBalancer"):
        c.invalid("spec.clusterIP", cluster_ip, f"may not be set to 'None' for {svc_type} services")
    if svc_type == "ExternalName":
        external = c.get_str(spec, "externalName", p)
        if not external:
            c.required("spec.externalName")
        else:
            c.each_invalid(
                "spec.externalName", external, meta.dns1123_subdomain_errors(external.rstrip("."))
            )
        if cluster_ip and not headless:
            c.forbidden("spec.clusterIP", "may not be set for ExternalName services")
    ports = c.get_objs(spec, "ports", p)
    if not ports and not headless and svc_type != "ExternalName":
        c.required("spec.ports")
    names: set[str] = set()
    seen: set[tuple[Any, Any]] = set()
    node_ports: set[tuple[Any, Any]] = set()
    for port_path, port in ports:
        name = c.get_str(port, "name", port_path)
        if len(ports) > 1 and not name:
            c.required(_join(port_path, "name"))
        if name:
            c.each_invalid(_join(port_path, "name"), name, meta.dns1123_label_errors(name))
            if name in names:
                c.duplicate(_join(port_path, "name"), name)
            names.add(name)
        _port_in_range(c, port, "port", port_path)
        protocol = c.one_of(port, "protocol", port_path, PROTOCOLS, required=True)
        if port.get("targetPort") is not None:
            _port_ref(c, port, "targetPort", port_path)
        node_port = c.get_int(port, "nodePort", port_path)
        if node_port:
            if svc_type == "ClusterIP":
                c.forbidden(
                    _join(port_path, "nodePort"), "may not be used when `type` is 'ClusterIP'"
                )
            elif not 1 <= node_port <= 65535:
                c.invalid(_join(port_path, "nodePort"), node_port, PORT_RANGE_ERROR)
            elif (node_port, protocol) in node_ports:
                c.duplicate(_join(port_path, "nodePort"), node_port)
            node_ports.add((node_port, protocol))
        number = port.get("port")
        if _is_int(number):
            if (number, protocol) in seen:
                c.duplicate(port_path, {"port": number, "protocol": protocol})
            seen.add((number, protocol))
    _labels(c, c.get_str_map(spec, "selector", p), "spec.selector")
    affinity = c.one_of(spec, "sessionAffinity", p, ("ClientIP", "None"), required=True)
    config = c.get_obj(spec, "sessionAffinityConfig", p)
    if affinity == "ClientIP":
        client_ip = c.get_obj(config or {}, "clientIP", "spec.sessionAffinityConfig")
        tpath = "spec.sessionAffinityConfig.clientIP.timeoutSeconds"
        timeout = c.get_int(client_ip or {}, "timeoutSeconds", tpath.rsplit(".", 1)[0])
        if timeout is None:
            c.required(tpath)
        elif not 0 < timeout <= MAX_CLIENT_IP_AFFINITY_SECONDS:
            c.invalid(
                tpath,
                timeout,
                f"must be greater than 0 and less than {MAX_CLIENT_IP_AFFINITY_SECONDS}",
            )
    elif affinity == "None" and config:
        c.invalid(
            "spec.sessionAffinityConfig", config, "must not be set when session affinity is None"
        )
    traffic = c.one_of(spec, "externalTrafficPolicy", p, ("Cluster", "Local"))
    if traffic and svc_type not in ("NodePort", "LoadBalancer"):
        c.invalid(
            "spec.externalTrafficPolicy",
            traffic,
            "may only be set when `type` is 'NodePort' or 'LoadBalancer'",
        )
    c.one_of(spec, "internalTrafficPolicy", p, ("Cluster", "Local"))
    for i, family in enumerate(c.get_strings(spec, "ipFamilies", p) or []):
        if family not in ("IPv4", "IPv6"):
            c.not_supported(f"spec.ipFamilies[{i}]", family, ["IPv4", "IPv6"])
    c.one_of(spec, "ipFamilyPolicy", p, ("PreferDualStack", "RequireDualStack", "SingleStack"))
    for i, ip in enumerate(c.get_strings(spec, "externalIPs", p) or []):
        c.each_invalid(f"spec.externalIPs[{i}]", ip, _ip_errors(ip))


def _validate_service_update(c: _Causes, svc: Obj, old: Obj) -> None:
    new_spec, old_spec = _object_at(svc, "spec"), _object_at(old, "spec")
    old_ip, new_ip = old_spec.get("clusterIP"), new_spec.get("clusterIP")
    if old_ip and new_spec.get("type") != "ExternalName" and new_ip != old_ip:
        c.invalid("spec.clusterIP", new_ip or "", IMMUTABLE)


# --- apps ----------------------------------------------------------------------------------


def _validate_int_or_percent(c: _Causes, parent: Obj, key: str, path: str) -> int | str | None:
    value = parent.get(key)
    p = _join(path, key)
    if value is None:
        return None
    if _is_int(value):
        if value < 0:
            c.invalid(p, value, NON_NEGATIVE)
        return int(value)
    if isinstance(value, str):
        if not re.fullmatch(r"[0-9]+%", value):
            c.invalid(
                p,
                value,
                "a valid percent string must be a numeric string followed by "
                "an ending '%' (e.g. '1%',  or '93%', regex used for validation "
                "is '[0-9]+%')",
            )
            return None
        return value
    c.wrong_type(p, value, "an integer or a percent string")
    return None


def _is_zero(value: int | str | None) -> bool:
    return value == 0 or value == "0%"


def _replicated(
    c: _Causes,
    obj: Obj,
    kind_word: str,
    path: str = "spec",
    restart_policies: Sequence[str] = ("Always",),
    selector_required: bool = True,
    claim_volumes: Iterable[str] = (),
) -> Obj | None:
    """The spec checks every kind that runs pods from a template shares (the selector, the
    template's labels and pod spec); returns the spec when it is an object. `obj` holds the
    spec at `path` (a CronJob's is `spec.jobTemplate.spec`)."""
    parent: Obj = obj
    for part in path.split(".")[:-1]:
        parent = _object_at(parent, part)
    key = path.split(".")[-1]
    spec = c.get_obj(parent, key, path.rpartition(".")[0])
    if spec is None:
        if parent.get(key) is None:
            if selector_required:
                c.required(_join(path, "selector"))
            c.required(_join(path, "template"))
        return None
    c.non_negative(spec, "replicas", path)
    c.non_negative(spec, "minReadySeconds", path)
    selector = c.get_obj(spec, "selector", path)
    if selector is None:
        if spec.get("selector") is None and selector_required:
            c.required(_join(path, "selector"))
    else:
        _label_selector(c, selector, _join(path, "selector"))
        if not selector.get("matchLabels") and not selector.get("matchExpressions"):
            c.invalid(
                _join(path, "selector"), selector, f"empty selector is invalid for {kind_word}"
            )
    template = c.get_obj(spec, "template", path)
    tpath = _join(path, "template")
    if template is None:
        if spec.get("template") is None:
            c.required(tpath)
        return spec
    tmd = c.get_obj(template, "metadata", tpath) or {}
    labels = c.get_str_map(tmd, "labels", _join(tpath, "metadata"))
    _labels(c, labels, _join(tpath, "metadata.labels"))
    if selector is not None and (selector.get("matchLabels") or selector.get("matchExpressions")):
        try:
            matches = LabelSelector.from_spec(selector).matches(labels or {})
        except ApiError:  # a malformed selector was already reported above
            matches = True
        if not matches:
            c.invalid(
                _join(tpath, "metadata.labels"),
                labels or {},
                "`selector` does not match template `labels`",
            )
    tspec = c.get_obj(template, "spec", tpath)
    if tspec is None:
        c.required(_join(tpath, "spec.containers"))
    else:
        _pod_spec(c, tspec, _join(tpath, "spec"), restart_policies, claim_volumes)
    return spec


def _validate_deployment(c: _Causes, dep: Obj) -> None:
    spec = _replicated(c, dep, "deployment")
    if spec is None:
        return
    c.non_negative(spec, "revisionHistoryLimit", "spec")
    deadline = c.get_int(spec, "progressDeadlineSeconds", "spec")
    min_ready_value = spec.get("minReadySeconds")
    min_ready = min_ready_value if _is_int(min_ready_value) else 0
    if deadline is not None:
        if deadline <= 0:
            c.invalid("spec.progressDeadlineSeconds", deadline, "must be greater than 0")
        elif deadline <= min_ready:
            c.invalid(
                "spec.progressDeadlineSeconds", deadline, "must be greater than minReadySeconds"
            )
    c.get_bool(spec, "paused", "spec")
    strategy = c.get_obj(spec, "strategy", "spec")
    if strategy is None:
        return
    kind = c.one_of(strategy, "type", "spec.strategy", ("Recreate", "RollingUpdate"), required=True)
    rolling = c.get_obj(strategy, "rollingUpdate", "spec.strategy")
    if kind == "Recreate" and rolling is not None:
        c.forbidden(
            "spec.strategy.rollingUpdate", "may not be specified when strategy `type` is 'Recreate'"
        )
    if kind == "RollingUpdate" and rolling is not None:
        _rolling_fenceposts(c, rolling, "spec.strategy.rollingUpdate")


def _rolling_fenceposts(c: _Causes, rolling: Obj, rpath: str) -> None:
    unavailable = _validate_int_or_percent(c, rolling, "maxUnavailable", rpath)
    surge = _validate_int_or_percent(c, rolling, "maxSurge", rpath)
    if isinstance(unavailable, str) and int(unavailable[:-1]) > 100:
        c.invalid(_join(rpath, "maxUnavailable"), unavailable, "must not be greater than 100%")
    if _is_zero(unavailable) and _is_zero(surge):
        c.invalid(_join(rpath, "maxUnavailable"), unavailable, "may not be 0 when `maxSurge` is 0")


def _validate_daemon_set(c: _Causes, ds: Obj) -> None:
    spec = _replicated(c, ds, "daemonset")
    if spec is None:
        return
    c.non_negative(spec, "revisionHistoryLimit", "spec")
    strategy = c.get_obj(spec, "updateStrategy", "spec")
    if strategy is None:
        return
    kind = c.one_of(
        strategy, "type", "spec.updateStrategy", ("OnDelete", "RollingUpdate"), required=True
    )
    rolling = c.get_obj(strategy, "rollingUpdate", "spec.updateStrategy")
    if kind == "RollingUpdate" and rolling is not None:
        _rolling_fenceposts(c, rolling, "spec.updateStrategy.rollingUpdate")


def _validate_stateful_set(c: _Causes, ss: Obj) -> None:
    claims: list[str] = []
    for path, claim in c.get_objs(_object_at(ss, "spec"), "volumeClaimTemplates", "spec"):
        name = _object_at(claim, "metadata").get("name")
        if not isinstance(name, str) or not name:
            c.required(_join(path, "metadata.name"))
            continue
        claims.append(name)
        inner = _Causes()
        _validate_pvc(inner, claim)
        for cause in inner.items:
            c.add(_join(path, cause.field), cause.reason, cause.message)
    spec = _replicated(c, ss, "statefulset", claim_volumes=claims)
    if spec is None:
        return
    c.non_negative(spec, "revisionHistoryLimit", "spec")
    c.one_of(spec, "podManagementPolicy", "spec", ("OrderedReady", "Parallel"))
    service = c.get_str(spec, "serviceName", "spec")
    if service:
        c.each_invalid("spec.serviceName", service, meta.dns1123_label_errors(service))
    ordinals = c.get_obj(spec, "ordinals", "spec")
    if ordinals is not None:
        c.non_negative(ordinals, "start", "spec.ordinals")
    strategy = c.get_obj(spec, "updateStrategy", "spec")
    if strategy is None:
        return
    kind = c.one_of(
        strategy, "type", "spec.updateStrategy", ("OnDelete", "RollingUpdate"), required=True
    )
    rolling = c.get_obj(strategy, "rollingUpdate", "spec.updateStrategy")
    if kind == "OnDelete" and rolling is not None:
        c.invalid(
            "spec.updateStrategy.rollingUpdate",
            rolling,
            "only allowed for updateStrategy 'RollingUpdate'",
        )
    if rolling is not None:
        c.non_negative(rolling, "partition", "spec.updateStrategy.rollingUpdate")


_STATEFUL_SET_MUTABLE = (
    "replicas",
    "ordinals",
    "template",
    "updateStrategy",
    "persistentVolumeClaimRetentionPolicy",
    "minReadySeconds",
)


def _validate_stateful_set_update(c: _Causes, ss: Obj, old: Obj) -> None:
    new_spec, old_spec = _object_at(ss, "spec"), _object_at(old, "spec")
    fixed = {k: v for k, v in new_spec.items() if k not in _STATEFUL_SET_MUTABLE}
    was = {k: v for k, v in old_spec.items() if k not in _STATEFUL_SET_MUTABLE}
    if fixed != was:
        c.forbidden(
            "spec",
            "updates to statefulset spec for fields other than 'replicas', 'ordinals', "
            "'template', 'updateStrategy', 'persistentVolumeClaimRetentionPolicy' and "
            "'minReadySeconds' are forbidden",
        )


def _validate_replication_controller(c: _Causes, rc: Obj) -> None:
    """A map selector (`spec.selector: {app: web}`): checked as matchLabels."""
    spec = c.get_obj(rc, "spec", "") or {}
    selector = c.get_str_map(spec, "selector", "spec")
    if not selector:
        c.required("spec.selector")
        return
    view = {**rc, "spec": {**spec, "selector": {"matchLabels": selector}}}
    causes = _Causes()
    _replicated(causes, view, "replicationcontroller")
    for cause in causes.items:
        field = "spec.selector" if cause.field.startswith("spec.selector.") else cause.field
        c.add(field, cause.reason, cause.message)


def _validate_replica_set(c: _Causes, rs: Obj) -> None:
    _replicated(c, rs, "replicaset")


def _validate_selector_update(c: _Causes, obj: Obj, old: Obj) -> None:
    new_sel = _object_at(obj, "spec").get("selector")
    old_sel = _object_at(old, "spec").get("selector")
    if old_sel is not None and new_sel != old_sel:
        c.invalid("spec.selector", new_sel, IMMUTABLE)


# --- endpoints -----------------------------------------------------------------------------


def _endpoint_ports(c: _Causes, ports: list[tuple[str, Obj]], name_rule: NameRule) -> None:
    names: set[str] = set()
    for port_path, port in ports:
        name = c.get_str(port, "name", port_path)
        if len(ports) > 1 and name is None:
            c.required(_join(port_path, "name"))
        if name:
            c.each_invalid(_join(port_path, "name"), name, name_rule(name))
            if name in names:
                c.duplicate(_join(port_path, "name"), name)
            names.add(name)
        c.one_of(port, "protocol", port_path, PROTOCOLS, required=True)
        c.get_str(port, "appProtocol", port_path)


def _validate_endpoints(c: _Causes, ep: Obj) -> None:
    for subset_path, subset in c.get_objs(ep, "subsets", ""):
        for field in ("addresses", "notReadyAddresses"):
            for addr_path, addr in c.get_objs(subset, field, subset_path):
                ip = c.get_str(addr, "ip", addr_path)
                if not ip:
                    c.required(_join(addr_path, "ip"))
                else:
                    c.each_invalid(_join(addr_path, "ip"), ip, _ip_errors(ip))
                hostname = c.get_str(addr, "hostname", addr_path)
                if hostname:
                    c.each_invalid(
                        _join(addr_path, "hostname"), hostname, meta.dns1123_label_errors(hostname)
                    )
                node = c.get_str(addr, "nodeName", addr_path)
                if node:
                    c.each_invalid(
                        _join(addr_path, "nodeName"), node, meta.dns1123_subdomain_errors(node)
                    )
                c.get_obj(addr, "targetRef", addr_path)
        ports = c.get_objs(subset, "ports", subset_path)
        for port_path, port in ports:
            _port_in_range(c, port, "port", port_path)
        _endpoint_ports(c, ports, meta.dns1123_label_errors)


_ADDRESS_TYPES = ("FQDN", "IPv4", "IPv6")
MAX_SLICE_ENDPOINTS = 1000
MAX_ENDPOINT_ADDRESSES = 100
MAX_SLICE_PORTS = 20000


def _validate_endpoint_slice(c: _Causes, es: Obj) -> None:
    address_type = c.one_of(es, "addressType", "", _ADDRESS_TYPES, required=True)
    endpoints = c.get_objs(es, "endpoints", "")
    if len(endpoints) > MAX_SLICE_ENDPOINTS:
        c.too_many("endpoints", len(endpoints), MAX_SLICE_ENDPOINTS)
    for ep_path, ep in endpoints:
        addresses = c.get_strings(ep, "addresses", ep_path)
        apath = _join(ep_path, "addresses")
        if not addresses:
            if addresses is not None or ep.get("addresses") is None:
                c.required(apath, "must contain at least 1 address")
        elif len(addresses) > MAX_ENDPOINT_ADDRESSES:
            c.too_many(apath, len(addresses), MAX_ENDPOINT_ADDRESSES)
        for i, address in enumerate(addresses or []):
            if address_type == "IPv4":
                problems = _ip_errors(address, 4)
            elif address_type == "IPv6":
                problems = _ip_errors(address, 6)
            else:
                problems = meta.dns1123_subdomain_errors(address)
            c.each_invalid(f"{apath}[{i}]", address, problems)
        conditions = c.get_obj(ep, "conditions", ep_path)
        for cond in ("ready", "serving", "terminating"):
            c.get_bool(conditions or {}, cond, _join(ep_path, "conditions"))
        hostname = c.get_str(ep, "hostname", ep_path)
        if hostname:
            c.each_invalid(
                _join(ep_path, "hostname"), hostname, meta.dns1123_label_errors(hostname)
            )
        node = c.get_str(ep, "nodeName", ep_path)
        if node:
            c.each_invalid(_join(ep_path, "nodeName"), node, meta.dns1123_subdomain_errors(node))
        c.get_obj(ep, "targetRef", ep_path)
    ports = c.get_objs(es, "ports", "")
    if len(ports) > MAX_SLICE_PORTS:
        c.too_many("ports", len(ports), MAX_SLICE_PORTS)
    for port_path, port in ports:
        if port.get("port") is not None:
            _port_in_range(c, port, "port", port_path)
    _endpoint_ports(c, ports, meta.dns1123_label_errors)


def _validate_endpoint_slice_update(c: _Causes, es: Obj, old: Obj) -> None:
    if es.get("addressType") != old.get("addressType"):
        c.invalid("addressType", es.get("addressType"), IMMUTABLE)


# --- Node, Namespace -----------------------------------------------------------------------

_ADDRESS_KINDS = ("ExternalDNS", "ExternalIP", "Hostname", "InternalDNS", "InternalIP")


def _validate_node(c: _Causes, node: Obj) -> None:
    spec = c.get_obj(node, "spec", "") or {}
    pod_cidr = c.get_str(spec, "podCIDR", "spec")
    if pod_cidr:
        c.each_invalid("spec.podCIDR", pod_cidr, _cidr_errors(pod_cidr))
    cidrs = c.get_strings(spec, "podCIDRs", "spec") or []
    for i, cidr in enumerate(cidrs):
        c.each_invalid(f"spec.podCIDRs[{i}]", cidr, _cidr_errors(cidr))
    if pod_cidr and cidrs and cidrs[0] != pod_cidr:
        c.invalid("spec.podCIDRs", cidrs, "the first entry must match `podCIDR`")
    c.get_bool(spec, "unschedulable", "spec")
    for taint_path, taint in c.get_objs(spec, "taints", "spec"):
        key = c.get_str(taint, "key", taint_path)
        if not key:
            c.required(_join(taint_path, "key"))
        else:
            c.each_invalid(_join(taint_path, "key"), key, meta.qualified_name_errors(key))
        value = c.get_str(taint, "value", taint_path)
        if value:
            c.each_invalid(_join(taint_path, "value"), value, meta.label_value_errors(value))
        c.one_of(taint, "effect", taint_path, _TAINT_EFFECTS, required=True)
    status = c.get_obj(node, "status", "") or {}
    for addr_path, addr in c.get_objs(status, "addresses", "status"):
        c.one_of(addr, "type", addr_path, _ADDRESS_KINDS, required=True)
        if not c.get_str(addr, "address", addr_path):
            c.required(_join(addr_path, "address"))


def _validate_node_update(c: _Causes, node: Obj, old: Obj) -> None:
    new_spec, old_spec = _object_at(node, "spec"), _object_at(old, "spec")
    for field in ("podCIDR", "podCIDRs"):
        if old_spec.get(field) and new_spec.get(field) != old_spec.get(field):
            c.forbidden(
                f"spec.{field}", 'node updates may not change podCIDR except from "" to valid'
            )


_STANDARD_FINALIZERS = ("foregroundDeletion", "kubernetes", "orphan")


def _validate_namespace(c: _Causes, ns: Obj) -> None:
    spec = c.get_obj(ns, "spec", "") or {}
    for i, fin in enumerate(c.get_strings(spec, "finalizers", "spec") or []):
        path = f"spec.finalizers[{i}]"
        if "/" not in fin and fin not in _STANDARD_FINALIZERS:
            c.invalid(
                path, fin, "name is neither a standard finalizer name nor is it fully qualified"
            )
        else:
            c.each_invalid(path, fin, meta.qualified_name_errors(fin))
    status = c.get_obj(ns, "status", "") or {}
    c.one_of(status, "phase", "status", ("Active", "Terminating"))


# --- ConfigMap, Secret, ServiceAccount, Event, Lease ---------------------------------------


def _data_keys(c: _Causes, data: dict[str, Any] | None, field: str) -> int:
    size = 0
    for k, v in (data or {}).items():
        c.each_invalid(f"{field}[{k}]", k, meta.config_key_errors(k))
        size += len(v.encode()) if isinstance(v, str) else 0
    return size


def _validate_config_map(c: _Causes, cm: Obj) -> None:
    data = c.get_str_map(cm, "data", "")
    binary = c.get_str_map(cm, "binaryData", "")
    size = _data_keys(c, data, "data") + _data_keys(c, binary, "binaryData")
    for k in set(data or {}) & set(binary or {}):
        c.invalid(f"data[{k}]", k, "duplicate of key present in binaryData")
    for k, v in (binary or {}).items():
        if not _is_base64(v):
            c.invalid(f"binaryData[{k}]", "<value omitted>", "must be base64-encoded")
    if size > DATA_MAX_BYTES:
        c.too_long("data", DATA_MAX_BYTES)
    c.get_bool(cm, "immutable", "")


def _is_base64(text: str) -> bool:
    try:
        base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


_BASIC_AUTH = "kubernetes.io/basic-auth"
_SERVICE_ACCOUNT_TOKEN = "kubernetes.io/service-account-token"  # noqa: S105 - a type name
_SECRET_REQUIRED_KEYS: dict[str, tuple[str, ...]] = {
    "kubernetes.io/tls": ("tls.crt", "tls.key"),
    "kubernetes.io/dockerconfigjson": (".dockerconfigjson",),
    "kubernetes.io/dockercfg": (".dockercfg",),
    "kubernetes.io/ssh-auth": ("ssh-privatekey",),
}


def _validate_secret(c: _Causes, secret: Obj) -> None:
    secret_type = c.get_str(secret, "type", "")
    data = c.get_str_map(secret, "data", "") or {}
    size = _data_keys(c, data, "data")
    for k, v in data.items():
        if not _is_base64(v):
            c.invalid(f"data[{k}]", "<value omitted>", "must be base64-encoded")
    _data_keys(c, c.get_str_map(secret, "stringData", ""), "stringData")
    if size > DATA_MAX_BYTES:
        c.too_long("data", DATA_MAX_BYTES)
    for required in _SECRET_REQUIRED_KEYS.get(secret_type or "", ()):
        if required not in data:
            c.required(f"data[{required}]")
    if secret_type == _BASIC_AUTH and not {"username", "password"} & set(data):
        c.required("data[username]")
    if secret_type == _SERVICE_ACCOUNT_TOKEN:
        annotations = _object_at(_object_at(secret, "metadata"), "annotations")
        if not annotations.get("kubernetes.io/service-account.name"):
            c.required("metadata.annotations[kubernetes.io/service-account.name]")
    c.get_bool(secret, "immutable", "")


def _validate_immutable_data(c: _Causes, obj: Obj, old: Obj, fields: Sequence[str]) -> None:
    if old.get("immutable") is not True:
        return
    if obj.get("immutable") is not True:
        c.forbidden("immutable", "field is immutable when `immutable` is set")
    for field in fields:
        if obj.get(field) != old.get(field):
            c.forbidden(field, "field is immutable when `immutable` is set")


def _validate_secret_update(c: _Causes, secret: Obj, old: Obj) -> None:
    if secret.get("type") != old.get("type"):
        c.invalid("type", secret.get("type"), IMMUTABLE)
    _validate_immutable_data(c, secret, old, ("data",))


def _validate_service_account(c: _Causes, sa: Obj) -> None:
    for field in ("secrets", "imagePullSecrets"):
        for ref_path, ref in c.get_objs(sa, field, ""):
            c.get_str(ref, "name", ref_path)
    c.get_bool(sa, "automountServiceAccountToken", "")


def _validate_event(c: _Causes, ev: Obj) -> None:
    involved = c.get_obj(ev, "involvedObject", "")
    namespace = _object_at(ev, "metadata").get("namespace") or ""
    if involved is not None:
        inv_ns = c.get_str(involved, "namespace", "involvedObject") or ""
        for field in ("kind", "name", "uid", "apiVersion", "resourceVersion", "fieldPath"):
            c.get_str(involved, field, "involvedObject")
        if inv_ns and inv_ns != namespace:
            c.invalid("involvedObject.namespace", inv_ns, "does not match event.namespace")
        if not inv_ns and namespace not in ("", "default"):
            c.invalid("involvedObject.namespace", inv_ns, "does not match event.namespace")
    event_type = c.get_str(ev, "type", "")
    if event_type and event_type not in ("Normal", "Warning"):
        c.not_supported("type", event_type, ["Normal", "Warning"])
    for field in ("reason", "message", "reportingComponent", "reportingInstance", "action"):
        c.get_str(ev, field, "")
    c.non_negative(ev, "count", "")
    c.get_obj(ev, "source", "")


def _validate_lease(c: _Causes, lease: Obj) -> None:
    spec = c.get_obj(lease, "spec", "") or {}
    c.get_str(spec, "holderIdentity", "spec")
    duration = c.get_int(spec, "leaseDurationSeconds", "spec")
    if duration is not None and duration <= 0:
        c.invalid("spec.leaseDurationSeconds", duration, "must be greater than 0")
    c.non_negative(spec, "leaseTransitions", "spec")
    for field in ("acquireTime", "renewTime"):
        stamp = c.get_str(spec, field, "spec")
        if stamp and meta.parse_rfc3339(stamp) is None:
            c.invalid(f"spec.{field}", stamp, "must be an RFC 3339 timestamp")


# --- NetworkPolicy (pkg/apis/networking/validation) ----------------------------------------

_POLICY_TYPES = ("Ingress", "Egress")


def _policy_port(c: _Causes, port: Obj, path: str) -> None:
    protocol = c.get_str(port, "protocol", path)
    if protocol is not None and protocol not in PROTOCOLS:
        c.not_supported(_join(path, "protocol"), protocol, ("TCP", "UDP", "SCTP"))
    value = port.get("port")
    end = c.get_int(port, "endPort", path)
    end_path = _join(path, "endPort")
    if value is None:
        if end is not None:
            c.invalid(end_path, end, "may not be specified when `port` is not specified")
    elif _is_int(value):
        if not 1 <= value <= 65535:
            c.invalid(_join(path, "port"), value, PORT_RANGE_ERROR)
        if end is not None:
            if end < value:
                c.invalid(end_path, value, "must be greater than or equal to `port`")
            if not 1 <= end <= 65535:
                c.invalid(end_path, end, PORT_RANGE_ERROR)
    elif isinstance(value, str):
        if end is not None:
            c.invalid(end_path, end, "may not be specified when `port` is non-numeric")
        c.each_invalid(_join(path, "port"), value, port_name_errors(value))
    else:
        c.wrong_type(_join(path, "port"), value, "an integer or a string")


def _ip_block(c: _Causes, block: Obj, path: str) -> None:
    cidr = c.get_str(block, "cidr", path)
    if not cidr:
        c.required(_join(path, "cidr"))
        return
    errs = _cidr_errors(cidr)
    c.each_invalid(_join(path, "cidr"), cidr, errs)
    excepts = c.get_strings(block, "except", path) or []
    if errs:
        return
    outer = ipaddress.ip_network(cidr, strict=False)
    for i, text in enumerate(excepts):
        except_path = f"{_join(path, 'except')}[{i}]"
        except_errs = _cidr_errors(text)
        c.each_invalid(except_path, text, except_errs)
        if except_errs:
            continue
        inner = ipaddress.ip_network(text, strict=False)
        if (
            inner.version != outer.version
            or inner.network_address not in outer
            or outer.prefixlen >= inner.prefixlen
        ):
            c.invalid(except_path, text, "must be a strict subset of `cidr`")


def _policy_peer(c: _Causes, peer: Obj, path: str) -> None:
    count = 0
    for key in ("podSelector", "namespaceSelector"):
        sel = c.get_obj(peer, key, path)
        if sel is not None:
            count += 1
            _label_selector(c, sel, _join(path, key))
    block = c.get_obj(peer, "ipBlock", path)
    if block is not None:
        count += 1
        _ip_block(c, block, _join(path, "ipBlock"))
    if count == 0:
        c.required(path, "must specify a peer")
    elif count > 1 and block is not None:
        c.forbidden(path, "may not specify both ipBlock and another peer")


def _validate_network_policy(c: _Causes, policy: Obj) -> None:
    spec = c.get_obj(policy, "spec", "") or {}
    _label_selector(c, c.get_obj(spec, "podSelector", "spec") or {}, "spec.podSelector")
    for direction, peers in (("ingress", "from"), ("egress", "to")):
        for rule_path, rule in c.get_objs(spec, direction, "spec"):
            for port_path, port in c.get_objs(rule, "ports", rule_path):
                _policy_port(c, port, port_path)
            for peer_path, peer in c.get_objs(rule, peers, rule_path):
                _policy_peer(c, peer, peer_path)
    types = c.get_strings(spec, "policyTypes", "spec")
    if types is None:
        return
    if len(types) > len(_POLICY_TYPES):
        c.invalid("spec.policyTypes", types, "may not specify more than two policyTypes")
        return
    for i, kind in enumerate(types):
        if kind not in _POLICY_TYPES:
            c.not_supported(f"spec.policyTypes[{i}]", kind, _POLICY_TYPES)


# --- quantities ----------------------------------------------------------------------------

_QUANTITY_SUFFIX = {
    "": 0,
    "n": -9,
    "u": -6,
    "m": -3,
    "k": 3,
    "M": 6,
    "G": 9,
    "T": 12,
    "P": 15,
    "E": 18,
}
_BINARY_SUFFIX = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}
_QUANTITY_MESSAGE = (
    "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
)


def quantity_value(value: Any) -> Decimal | None:
    """A resource quantity (`500m`, `1Gi`, `2e3`, an integer) as a number; None if malformed."""
    if _is_int(value):
        return Decimal(value)
    if not isinstance(value, str) or not _QUANTITY.fullmatch(value):
        return None
    match = re.fullmatch(r"([+-]?(?:\d+\.?\d*|\.\d+))(.*)", value)
    if match is None:
        return None
    number, suffix = Decimal(match.group(1)), match.group(2)
    if suffix in _BINARY_SUFFIX:
        return number * (1 << _BINARY_SUFFIX[suffix])
    if suffix in _QUANTITY_SUFFIX:
        return number.scaleb(_QUANTITY_SUFFIX[suffix])
    return number.scaleb(int(suffix[1:]))


def _quantity(c: _Causes, value: Any, path: str) -> Decimal | None:
    parsed = quantity_value(value)
    if parsed is None:
        c.invalid(path, value, _QUANTITY_MESSAGE)
    return parsed


def _quantities(c: _Causes, parent: Obj, key: str, path: str) -> dict[str, Decimal]:
    """A `ResourceList` (name → quantity); every value must parse and be non-negative."""
    out: dict[str, Decimal] = {}
    for name, value in (c.get_obj(parent, key, path) or {}).items():
        qpath = f"{_join(path, key)}[{name}]"
        c.each_invalid(qpath, name, meta.qualified_name_errors(name))
        parsed = _quantity(c, value, qpath)
        if parsed is not None:
            if parsed < 0:
                c.invalid(qpath, value, NON_NEGATIVE)
            out[name] = parsed
    return out


# --- PersistentVolumeClaim, LimitRange, ResourceQuota --------------------------------------

_ACCESS_MODES = ("ReadOnlyMany", "ReadWriteMany", "ReadWriteOnce", "ReadWriteOncePod")


def _validate_pvc(c: _Causes, pvc: Obj) -> None:
    spec = c.get_obj(pvc, "spec", "") or {}
    modes = c.get_strings(spec, "accessModes", "spec")
    if not modes:
        c.required("spec.accessModes", "at least 1 access mode is required")
    for mode in modes or []:
        if mode not in _ACCESS_MODES:
            c.not_supported("spec.accessModes", mode, _ACCESS_MODES)
    if modes and "ReadWriteOncePod" in modes and len(modes) > 1:
        c.forbidden("spec.accessModes", "may not use ReadWriteOncePod with other access modes")
    resources = c.get_obj(spec, "resources", "spec") or {}
    requests = _quantities(c, resources, "requests", "spec.resources")
    _quantities(c, resources, "limits", "spec.resources")
    storage = _object_at(resources, "requests").get("storage")
    if storage is None:
        c.required("spec.resources[storage]")
    elif requests.get("storage", Decimal(1)) <= 0:
        c.invalid("spec.resources[storage]", storage, "must be greater than zero")
    c.one_of(spec, "volumeMode", "spec", ("Block", "Filesystem"))
    for field in ("storageClassName", "volumeAttributesClassName"):
        name = c.get_str(spec, field, "spec")
        if name:
            c.each_invalid(_join("spec", field), name, meta.dns1123_subdomain_errors(name))
    c.get_str(spec, "volumeName", "spec")
    selector = c.get_obj(spec, "selector", "spec")
    if selector is not None:
        _label_selector(c, selector, "spec.selector")


def _validate_pvc_update(c: _Causes, pvc: Obj, old: Obj) -> None:
    new_spec, old_spec = dict(_object_at(pvc, "spec")), dict(_object_at(old, "spec"))
    if _object_at(old, "status").get("phase") == "Bound":
        for spec in (new_spec, old_spec):
            spec.pop("volumeAttributesClassName", None)
            spec["resources"] = {**_object_at(spec, "resources"), "requests": None}
    if new_spec != old_spec:
        c.forbidden(
            "spec",
            "spec is immutable after creation except resources.requests and "
            "volumeAttributesClassName for bound claims",
        )


_LIMIT_TYPES = ("Container", "PersistentVolumeClaim", "Pod")


def _validate_limit_range(c: _Causes, lr: Obj) -> None:
    spec = c.get_obj(lr, "spec", "") or {}
    items = c.get_objs(spec, "limits", "spec")
    if spec.get("limits") in (None, []):
        c.required("spec.limits")
    seen: set[str] = set()
    for path, item in items:
        kind = c.one_of(item, "type", path, _LIMIT_TYPES, required=True)
        if kind:
            if kind in seen:
                c.duplicate(_join(path, "type"), kind)
            seen.add(kind)
        bounds = {
            key: _quantities(c, item, key, path)
            for key in ("max", "min", "default", "defaultRequest", "maxLimitRequestRatio")
        }
        if kind == "Pod":
            for key in ("default", "defaultRequest"):
                if bounds[key]:
                    c.forbidden(_join(path, key), "may not be specified when `type` is 'Pod'")
        for name, low in bounds["min"].items():
            high = bounds["max"].get(name)
            if high is not None and low > high:
                c.invalid(
                    f"{_join(path, 'min')}[{name}]",
                    _object_at(item, "min").get(name),
                    f"min value {_object_at(item, 'min').get(name)} is greater than max value "
                    f"{_object_at(item, 'max').get(name)}",
                )
        for key in ("default", "defaultRequest"):
            for name, value in bounds[key].items():
                text = _object_at(item, key).get(name)
                floor, ceiling = bounds["min"].get(name), bounds["max"].get(name)
                if floor is not None and value < floor:
                    c.invalid(
                        f"{_join(path, key)}[{name}]",
                        text,
                        f"min value {_object_at(item, 'min').get(name)} is greater than "
                        f"{key} value {text}",
                    )
                if ceiling is not None and value > ceiling:
                    c.invalid(
                        f"{_join(path, key)}[{name}]",
                        text,
                        f"{key} value {text} is greater than max value "
                        f"{_object_at(item, 'max').get(name)}",
                    )


_QUOTA_SCOPES = (
    "BestEffort",
    "CrossNamespacePodAffinity",
    "NotBestEffort",
    "NotTerminating",
    "PriorityClass",
    "Terminating",
)


def _validate_resource_quota(c: _Causes, quota: Obj) -> None:
    spec = c.get_obj(quota, "spec", "") or {}
    _quantities(c, spec, "hard", "spec")
    for i, scope in enumerate(c.get_strings(spec, "scopes", "spec") or []):
        if scope not in _QUOTA_SCOPES:
            c.not_supported(f"spec.scopes[{i}]", scope, _QUOTA_SCOPES)
    c.get_obj(spec, "scopeSelector", "spec")
    status = c.get_obj(quota, "status", "") or {}
    _quantities(c, status, "hard", "status")
    _quantities(c, status, "used", "status")


# --- rbac.authorization.k8s.io (pkg/apis/rbac/validation) ----------------------------------

RBAC_GROUP = "rbac.authorization.k8s.io"


def path_segment_errors(value: object) -> list[str]:
    """Upstream `path.IsValidPathSegmentName`, the rule for RBAC object names."""
    if not isinstance(value, str):
        return ["must be a string"]
    if value in (".", ".."):
        return [f"may not be '{value}'"]
    return [f"may not contain '{bad}'" for bad in ("/", "%") if bad in value]


def _policy_rules(c: _Causes, obj: Obj, namespaced: bool) -> None:
    for path, rule in c.get_objs(obj, "rules", ""):
        verbs = c.get_strings(rule, "verbs", path)
        if not verbs:
            c.required(_join(path, "verbs"), "verbs must contain at least one value")
        groups = c.get_strings(rule, "apiGroups", path)
        resources = c.get_strings(rule, "resources", path)
        names = c.get_strings(rule, "resourceNames", path)
        urls = c.get_strings(rule, "nonResourceURLs", path)
        if urls:
            upath = _join(path, "nonResourceURLs")
            if namespaced:
                c.invalid(upath, urls, "namespaced rules cannot apply to non-resource URLs")
            if groups or resources or names:
                c.invalid(
                    upath,
                    urls,
                    "rules cannot apply to both regular resources and non-resource URLs",
                )
            continue
        if not groups:
            c.required(
                _join(path, "apiGroups"), "resource rules must supply at least one api group"
            )
        if not resources:
            c.required(_join(path, "resources"), "resource rules must supply at least one resource")


def _validate_role(c: _Causes, role: Obj) -> None:
    _policy_rules(c, role, namespaced=True)


def _validate_cluster_role(c: _Causes, role: Obj) -> None:
    _policy_rules(c, role, namespaced=False)
    aggregation = c.get_obj(role, "aggregationRule", "")
    if aggregation is None:
        return
    selectors = c.get_objs(aggregation, "clusterRoleSelectors", "aggregationRule")
    if not selectors:
        c.required(
            "aggregationRule.clusterRoleSelectors",
            "at least one clusterRoleSelector required if aggregationRule is non-nil",
        )
    for path, selector in selectors:
        _label_selector(c, selector, path)


def _binding(c: _Causes, binding: Obj, namespaced: bool) -> None:
    ref = c.get_obj(binding, "roleRef", "")
    if ref is None:
        c.required("roleRef")
        ref = {}
    c.one_of(ref, "apiGroup", "roleRef", (RBAC_GROUP,), required=True)
    kinds = ("Role", "ClusterRole") if namespaced else ("ClusterRole",)
    c.one_of(ref, "kind", "roleRef", kinds, required=True)
    role = c.get_str(ref, "name", "roleRef")
    if not role:
        c.required("roleRef.name")
    else:
        c.each_invalid("roleRef.name", role, path_segment_errors(role))
    for path, subject in c.get_objs(binding, "subjects", ""):
        kind = c.one_of(subject, "kind", path, ("ServiceAccount", "User", "Group"), required=True)
        name = c.get_str(subject, "name", path)
        group = c.get_str(subject, "apiGroup", path) or ""
        namespace = c.get_str(subject, "namespace", path)
        if not name:
            c.required(_join(path, "name"))
        if kind == "ServiceAccount":
            if group:
                c.not_supported(_join(path, "apiGroup"), group, [""])
            if name:
                c.each_invalid(_join(path, "name"), name, meta.dns1123_subdomain_errors(name))
            if not namespace and not namespaced:
                c.required(_join(path, "namespace"))
        elif kind in ("User", "Group") and group != RBAC_GROUP:
            c.not_supported(_join(path, "apiGroup"), group, [RBAC_GROUP])


def _validate_binding_update(c: _Causes, binding: Obj, old: Obj) -> None:
    if binding.get("roleRef") != old.get("roleRef"):
        c.invalid("roleRef", binding.get("roleRef"), "cannot change roleRef")


# --- networking.k8s.io Ingress, IngressClass -----------------------------------------------

_PATH_TYPES = ("Exact", "ImplementationSpecific", "Prefix")


def _ingress_host(c: _Causes, host: str, path: str) -> None:
    if not _ip_errors(host):
        c.invalid(path, host, "must be a DNS name, not an IP address")
        return
    name = host[2:] if host.startswith("*.") else host
    c.each_invalid(path, host, meta.dns1123_subdomain_errors(name))


def _ingress_backend(c: _Causes, backend: Obj, path: str) -> None:
    service = c.get_obj(backend, "service", path)
    resource = c.get_obj(backend, "resource", path)
    if service is not None and resource is not None:
        c.invalid(path, "", "cannot set both resource and service backends")
    elif service is None and resource is None:
        c.invalid(path, "", "resource or service backend is required")
    if service is not None:
        spath = _join(path, "service")
        name = c.get_str(service, "name", spath)
        if not name:
            c.required(_join(spath, "name"))
        else:
            c.each_invalid(_join(spath, "name"), name, meta.dns1035_label_errors(name))
        port = c.get_obj(service, "port", spath) or {}
        ppath = _join(spath, "port")
        number = c.get_int(port, "number", ppath)
        port_name = c.get_str(port, "name", ppath)
        if number and port_name:
            c.invalid(ppath, port, "cannot set both port name & port number")
        elif port_name:
            c.each_invalid(_join(ppath, "name"), port_name, port_name_errors(port_name))
        elif number is not None:
            if not 1 <= number <= 65535:
                c.invalid(_join(ppath, "number"), number, PORT_RANGE_ERROR)
        else:
            c.required(ppath, "port name or number is required")
    if resource is not None:
        rpath = _join(path, "resource")
        for field in ("kind", "name"):
            if not c.get_str(resource, field, rpath):
                c.required(_join(rpath, field))


def _validate_ingress(c: _Causes, ing: Obj) -> None:
    spec = c.get_obj(ing, "spec", "") or {}
    rules = c.get_objs(spec, "rules", "spec")
    default = c.get_obj(spec, "defaultBackend", "spec")
    if not rules and default is None:
        c.invalid(
            "spec", spec.get("rules") or [], "either `defaultBackend` or `rules` must be specified"
        )
    if default is not None:
        _ingress_backend(c, default, "spec.defaultBackend")
    class_name = c.get_str(spec, "ingressClassName", "spec")
    if class_name:
        c.each_invalid(
            "spec.ingressClassName", class_name, meta.dns1123_subdomain_errors(class_name)
        )
    for path, rule in rules:
        host = c.get_str(rule, "host", path)
        if host:
            _ingress_host(c, host, _join(path, "host"))
        http = c.get_obj(rule, "http", path)
        if http is None:
            continue
        hpath = _join(path, "http")
        paths = c.get_objs(http, "paths", hpath)
        if not paths:
            c.required(_join(hpath, "paths"))
        for ppath, item in paths:
            kind = c.get_str(item, "pathType", ppath)
            if not kind:
                c.required(_join(ppath, "pathType"), "pathType must be specified")
            elif kind not in _PATH_TYPES:
                c.not_supported(_join(ppath, "pathType"), kind, _PATH_TYPES)
            route = c.get_str(item, "path", ppath)
            if kind in ("Exact", "Prefix") and not (route or "").startswith("/"):
                c.invalid(_join(ppath, "path"), route or "", "must be an absolute path")
            backend = c.get_obj(item, "backend", ppath)
            if backend is None:
                c.required(_join(ppath, "backend"))
            else:
                _ingress_backend(c, backend, _join(ppath, "backend"))
    for path, tls in c.get_objs(spec, "tls", "spec"):
        for i, host in enumerate(c.get_strings(tls, "hosts", path) or []):
            _ingress_host(c, host, f"{_join(path, 'hosts')}[{i}]")
        secret = c.get_str(tls, "secretName", path)
        if secret:
            c.each_invalid(_join(path, "secretName"), secret, meta.dns1123_subdomain_errors(secret))


_CONTROLLER_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?(/[-A-Za-z0-9_.~%!$&'()*+,;=:@]+)+")


def _validate_ingress_class(c: _Causes, ic: Obj) -> None:
    spec = c.get_obj(ic, "spec", "") or {}
    controller = c.get_str(spec, "controller", "spec")
    if not controller:
        c.required("spec.controller")
    elif len(controller) > 250:
        c.too_long("spec.controller", 250)
    elif not _CONTROLLER_NAME.fullmatch(controller):
        c.invalid(
            "spec.controller",
            controller,
            'must be a domain-prefixed path (such as "acme.io/foo")',
        )
    params = c.get_obj(spec, "parameters", "spec")
    if params is None:
        return
    for field in ("kind", "name"):
        if not c.get_str(params, field, "spec.parameters"):
            c.required(f"spec.parameters.{field}")
    scope = c.one_of(params, "scope", "spec.parameters", ("Cluster", "Namespace"))
    namespace = c.get_str(params, "namespace", "spec.parameters")
    if scope == "Namespace" and not namespace:
        c.required("spec.parameters.namespace", "`parameters.scope` is set to 'Namespace'")
    if scope == "Cluster" and namespace:
        c.forbidden("spec.parameters.namespace", "`parameters.scope` is set to 'Cluster'")


def _validate_ingress_class_update(c: _Causes, ic: Obj, old: Obj) -> None:
    new = _object_at(ic, "spec").get("controller")
    if new != _object_at(old, "spec").get("controller"):
        c.invalid("spec.controller", new, IMMUTABLE)


# --- policy/v1 PodDisruptionBudget ---------------------------------------------------------


def _percent_at_most_100(c: _Causes, value: int | str | None, path: str) -> None:
    if isinstance(value, str) and int(value[:-1]) > 100:
        c.invalid(path, value, "must not be greater than 100%")


def _validate_pdb(c: _Causes, pdb: Obj) -> None:
    spec = c.get_obj(pdb, "spec", "") or {}
    low = _validate_int_or_percent(c, spec, "minAvailable", "spec")
    high = _validate_int_or_percent(c, spec, "maxUnavailable", "spec")
    _percent_at_most_100(c, low, "spec.minAvailable")
    _percent_at_most_100(c, high, "spec.maxUnavailable")
    if spec.get("minAvailable") is not None and spec.get("maxUnavailable") is not None:
        c.invalid("spec", spec, "minAvailable and maxUnavailable cannot be both set")
    selector = c.get_obj(spec, "selector", "spec")
    if selector is not None:
        _label_selector(c, selector, "spec.selector")
    c.one_of(spec, "unhealthyPodEvictionPolicy", "spec", ("AlwaysAllow", "IfHealthyBudget"))
    status = c.get_obj(pdb, "status", "") or {}
    for field in ("disruptionsAllowed", "currentHealthy", "desiredHealthy", "expectedPods"):
        c.non_negative(status, field, "status")


# --- autoscaling/v2 HorizontalPodAutoscaler ------------------------------------------------

_METRIC_SOURCES = {
    "ContainerResource": "containerResource",
    "External": "external",
    "Object": "object",
    "Pods": "pods",
    "Resource": "resource",
}
_TARGET_TYPES = ("AverageValue", "Utilization", "Value")


def _metric_target(c: _Causes, source: Obj, path: str) -> None:
    target = c.get_obj(source, "target", path)
    tpath = _join(path, "target")
    if target is None:
        c.required(tpath)
        return
    kind = c.one_of(target, "type", tpath, _TARGET_TYPES, required=True)
    field = {"AverageValue": "averageValue", "Value": "value"}.get(kind or "")
    if kind == "Utilization":
        util = c.get_int(target, "averageUtilization", tpath)
        if util is None:
            c.required(_join(tpath, "averageUtilization"))
        elif util <= 0:
            c.invalid(_join(tpath, "averageUtilization"), util, "must be greater than 0")
    elif field is not None:
        value = target.get(field)
        if value is None:
            c.required(_join(tpath, field), f"must set either a target {field}")
        else:
            parsed = _quantity(c, value, _join(tpath, field))
            if parsed is not None and parsed <= 0:
                c.invalid(_join(tpath, field), value, "must be positive")


def _validate_hpa(c: _Causes, hpa: Obj) -> None:
    spec = c.get_obj(hpa, "spec", "") or {}
    ref = c.get_obj(spec, "scaleTargetRef", "spec")
    if ref is None:
        c.required("spec.scaleTargetRef")
        ref = {}
    for field in ("kind", "name"):
        value = c.get_str(ref, field, "spec.scaleTargetRef")
        if not value:
            c.required(f"spec.scaleTargetRef.{field}")
        else:
            c.each_invalid(f"spec.scaleTargetRef.{field}", value, path_segment_errors(value))
    low = c.get_int(spec, "minReplicas", "spec")
    high = c.get_int(spec, "maxReplicas", "spec")
    if low is not None and low < 1:
        c.invalid("spec.minReplicas", low, "must be greater than or equal to 1")
    if high is None:
        c.required("spec.maxReplicas")
    elif high < 1:
        c.invalid("spec.maxReplicas", high, "must be greater than 0")
    elif low is not None and high < low:
        c.invalid("spec.maxReplicas", high, "must be greater than or equal to `minReplicas`")
    for path, metric in c.get_objs(spec, "metrics", "spec"):
        kind = c.one_of(metric, "type", path, sorted(_METRIC_SOURCES), required=True)
        key = _METRIC_SOURCES.get(kind or "")
        if key is None:
            continue
        for other in _METRIC_SOURCES.values():
            if other != key and metric.get(other) is not None:
                c.forbidden(_join(path, other), "must populate the given metric source only")
        source = c.get_obj(metric, key, path)
        spath = _join(path, key)
        if source is None:
            c.required(spath, "must populate information for the given metric source")
            continue
        if key in ("resource", "containerResource"):
            if not c.get_str(source, "name", spath):
                c.required(_join(spath, "name"))
            if key == "containerResource" and not c.get_str(source, "container", spath):
                c.required(_join(spath, "container"))
        else:
            metric_id = c.get_obj(source, "metric", spath) or {}
            if not c.get_str(metric_id, "name", _join(spath, "metric")):
                c.required(_join(spath, "metric.name"))
        _metric_target(c, source, spath)
    c.get_obj(spec, "behavior", "spec")


# --- apiregistration.k8s.io/v1 APIService --------------------------------------------------


def _validate_api_service(c: _Causes, svc: Obj) -> None:
    spec = c.get_obj(svc, "spec", "") or {}
    name = _object_at(svc, "metadata").get("name")
    version = c.get_str(spec, "version", "spec") or ""
    group = c.get_str(spec, "group", "spec") or ""
    if not version:
        c.required("spec.version")
    else:
        c.each_invalid("spec.version", version, meta.dns1035_label_errors(version))
    if group:
        c.each_invalid("spec.group", group, meta.dns1123_subdomain_errors(group))
    elif version != "v1":
        c.required("spec.group", "only v1 may have an empty group and it better be legacy kube")
    if isinstance(name, str) and name and name != f"{version}.{group}":
        c.invalid(
            "metadata.name", name, f'must be `spec.version+"."+spec.group`: "{version}.{group}"'
        )
    for field, limit in (("groupPriorityMinimum", 20000), ("versionPriority", 1000)):
        value = c.get_int(spec, field, "spec")
        if value is None or not 0 < value <= limit:
            c.invalid(f"spec.{field}", value or 0, f"must be positive and less than {limit}")
    service = c.get_obj(spec, "service", "spec")
    insecure = c.get_bool(spec, "insecureSkipTLSVerify", "spec")
    bundle = c.get_str(spec, "caBundle", "spec")
    if service is None:
        if bundle:
            c.invalid(
                "spec.caBundle", "<value omitted>", "local APIServices may not have a caBundle"
            )
        if insecure:
            c.invalid(
                "spec.insecureSkipTLSVerify",
                insecure,
                "local APIServices may not have insecureSkipTLSVerify",
            )
        return
    for field in ("namespace", "name"):
        if not c.get_str(service, field, "spec.service"):
            c.required(f"spec.service.{field}")
    port = c.get_int(service, "port", "spec.service")
    if port is not None and not 1 <= port <= 65535:
        c.invalid("spec.service.port", port, PORT_RANGE_ERROR)
    if insecure and bundle:
        c.invalid("spec.insecureSkipTLSVerify", insecure, "may not be true if caBundle is present")


# --- apps/v1 ControllerRevision ------------------------------------------------------------


def _validate_controller_revision(c: _Causes, cr: Obj) -> None:
    c.non_negative(cr, "revision", "")
    if cr.get("data") is None:
        c.required("data", "data is mandatory")


def _validate_controller_revision_update(c: _Causes, cr: Obj, old: Obj) -> None:
    if cr.get("data") != old.get("data"):
        c.invalid("data", "<value omitted>", IMMUTABLE)


# --- batch/v1 Job, CronJob (pkg/apis/batch/validation) --------------------------------------

_UNSUPPORTED_JOB_FIELDS = (
    "podFailurePolicy",
    "successPolicy",
    "backoffLimitPerIndex",
    "maxFailedIndexes",
)
MAX_INDEXED_COMPLETIONS = 100000


def _job_spec(c: _Causes, obj: Obj, path: str, selector_required: bool) -> None:
    spec = _replicated(c, obj, "job", path, ("OnFailure", "Never"), selector_required)
    if spec is None:
        return
    for field in ("parallelism", "completions", "backoffLimit", "ttlSecondsAfterFinished"):
        c.non_negative(spec, field, path)
    c.non_negative(spec, "activeDeadlineSeconds", path)
    for field in _UNSUPPORTED_JOB_FIELDS:
        if spec.get(field) is not None:
            c.forbidden(
                _join(path, field),
                f"{field} is not supported by podnet: every failed pod counts against backoffLimit",
            )
    mode = c.one_of(spec, "completionMode", path, ("Indexed", "NonIndexed"))
    completions = spec.get("completions")
    if mode == "Indexed":
        if completions is None:
            c.required(_join(path, "completions"), "when completion mode is Indexed")
        for field in ("completions", "parallelism"):
            value = spec.get(field)
            if _is_int(value) and value > MAX_INDEXED_COMPLETIONS:
                c.invalid(
                    _join(path, field),
                    value,
                    f"must be less than or equal to {MAX_INDEXED_COMPLETIONS} when completion "
                    "mode is Indexed",
                )
    c.one_of(spec, "podReplacementPolicy", path, ("Failed", "TerminatingOrFailed"))
    for field in ("manualSelector", "suspend"):
        c.get_bool(spec, field, path)


def _validate_job(c: _Causes, job: Obj) -> None:
    _job_spec(c, job, "spec", selector_required=True)


def _validate_job_update(c: _Causes, job: Obj, old: Obj) -> None:
    new_spec, old_spec = _object_at(job, "spec"), _object_at(old, "spec")
    for field in ("selector", "template", "completionMode", "completions"):
        if new_spec.get(field) != old_spec.get(field):
            c.invalid(f"spec.{field}", new_spec.get(field), IMMUTABLE)


MAX_CRON_JOB_NAME = 52  # a Job's name is the CronJob's plus "-" and up to 10 digits


def _validate_cron_job(c: _Causes, cj: Obj) -> None:
    name = _object_at(cj, "metadata").get("name")
    if isinstance(name, str) and len(name) > MAX_CRON_JOB_NAME:
        c.invalid("metadata.name", name, f"must be no more than {MAX_CRON_JOB_NAME} characters")
    spec = c.get_obj(cj, "spec", "") or {}
    schedule = c.get_str(spec, "schedule", "spec")
    if not schedule:
        c.required("spec.schedule")
    elif "TZ=" in schedule:
        c.invalid(
            "spec.schedule",
            schedule,
            "cannot use TZ or CRON_TZ in schedule, use timeZone field instead",
        )
    else:
        c.each_invalid("spec.schedule", schedule, cron.schedule_errors(schedule))
    zone_name = c.get_str(spec, "timeZone", "spec")
    if zone_name is not None:
        if zone_name.lower() == "local":
            c.invalid(
                "spec.timeZone",
                zone_name,
                "timeZone must be an explicit time zone as defined in "
                "https://www.iana.org/time-zones",
            )
        else:
            try:
                cron.zone(zone_name)
            except ValueError as exc:
                c.invalid("spec.timeZone", zone_name, str(exc))
    c.one_of(spec, "concurrencyPolicy", "spec", ("Allow", "Forbid", "Replace"), required=True)
    for field in (
        "startingDeadlineSeconds",
        "successfulJobsHistoryLimit",
        "failedJobsHistoryLimit",
    ):
        c.non_negative(spec, field, "spec")
    c.get_bool(spec, "suspend", "spec")
    if spec.get("jobTemplate") is None:
        c.required("spec.jobTemplate")
        return
    _job_spec(c, cj, "spec.jobTemplate.spec", selector_required=False)


# --- entry point ---------------------------------------------------------------------------

_Validator = Callable[[_Causes, Obj], None]
_UpdateValidator = Callable[[_Causes, Obj, Obj], None]

_CREATE: dict[str, _Validator] = {
    "Pod": _validate_pod,
    "Service": _validate_service,
    "Deployment": _validate_deployment,
    "ReplicaSet": _validate_replica_set,
    "Endpoints": _validate_endpoints,
    "EndpointSlice": _validate_endpoint_slice,
    "Node": _validate_node,
    "Namespace": _validate_namespace,
    "ConfigMap": _validate_config_map,
    "Secret": _validate_secret,
    "ServiceAccount": _validate_service_account,
    "Event": _validate_event,
    "Lease": _validate_lease,
    "NetworkPolicy": _validate_network_policy,
    "PersistentVolumeClaim": _validate_pvc,
    "LimitRange": _validate_limit_range,
    "ResourceQuota": _validate_resource_quota,
    "Role": _validate_role,
    "ClusterRole": _validate_cluster_role,
    "RoleBinding": lambda c, obj: _binding(c, obj, namespaced=True),
    "ClusterRoleBinding": lambda c, obj: _binding(c, obj, namespaced=False),
    "Ingress": _validate_ingress,
    "IngressClass": _validate_ingress_class,
    "PodDisruptionBudget": _validate_pdb,
    "HorizontalPodAutoscaler": _validate_hpa,
    "APIService": _validate_api_service,
    "ControllerRevision": _validate_controller_revision,
    "Job": _validate_job,
    "DaemonSet": _validate_daemon_set,
    "StatefulSet": _validate_stateful_set,
    "ReplicationController": _validate_replication_controller,
    "CronJob": _validate_cron_job,
}

_UPDATE: dict[str, _UpdateValidator] = {
    "Pod": _validate_pod_update,
    "Service": _validate_service_update,
    "Deployment": _validate_selector_update,
    "ReplicaSet": _validate_selector_update,
    "EndpointSlice": _validate_endpoint_slice_update,
    "Node": _validate_node_update,
    "ConfigMap": lambda c, obj, old: _validate_immutable_data(c, obj, old, ("data", "binaryData")),
    "Secret": _validate_secret_update,
    "PersistentVolumeClaim": _validate_pvc_update,
    "RoleBinding": _validate_binding_update,
    "ClusterRoleBinding": _validate_binding_update,
    "IngressClass": _validate_ingress_class_update,
    "ControllerRevision": _validate_controller_revision_update,
    "Job": _validate_job_update,
    "DaemonSet": _validate_selector_update,
    "StatefulSet": _validate_stateful_set_update,
}


def validate(res: Resource, obj: Obj, old: Obj | None) -> list[Cause]:
    """All causes that make `obj` (a create when `old` is None, else an update) invalid."""
    c = _Causes()
    body: object = obj  # callers pass decoded JSON; a non-object body is a cause, not a crash
    if not isinstance(body, dict):
        c.wrong_type("", body, "an object")
        return c.items
    _validate_metadata(c, res, obj)
    check = _CREATE.get(res.kind)
    if check is _validate_pod:
        _validate_pod(c, obj, old)
    elif check is not None:
        check(c, obj)
    if old is not None:
        _validate_metadata_update(c, obj, old)
        update_check = _UPDATE.get(res.kind)
        if update_check is not None:
            update_check(c, obj, old)
    return c.items


# --- known fields (fieldValidation=Strict|Warn|Ignore) -------------------------------------
#
# Upstream decodes bodies into Go structs, so a field the type does not have is dropped, and
# with `fieldValidation=Strict` (kubectl's default) rejected: `strict decoding error: unknown
# field "spec.contaners"`. The fields of each type are `schema.KINDS`.


def unknown_fields(res: Resource, obj: Obj, only: Collection[str] | None = None) -> list[str]:
    """Paths of fields the upstream type does not have (`spec.template.spec.contaners`), in
    document order. Kinds without a schema report nothing. `only`: the top-level fields to
    look in (`schema.unknown_fields`)."""
    return schema.unknown_fields(res.kind, obj, only=only)


def drop_unknown_fields(
    res: Resource, obj: Obj, only: Collection[str] | None = None
) -> tuple[Obj, list[str]]:
    """`obj` without unknown fields (what upstream stores for fieldValidation
    Ignore/Warn) and the paths that were dropped (Warn turns them into `Warning` headers:
    `unknown field "<path>"`); `obj` itself when it has none (most writes: no copy)."""
    if not schema.unknown_fields(res.kind, obj, only=only):
        return obj, []
    pruned = copy.deepcopy(obj)
    return pruned, schema.unknown_fields(res.kind, pruned, prune=True, only=only)


def strict_decoding_error(paths: Sequence[str]) -> ApiError:
    """The 400 upstream returns for fieldValidation=Strict when the body has unknown fields."""
    listed = ", ".join(f'unknown field "{p}"' for p in paths)
    return ApiError(400, "BadRequest", f"strict decoding error: {listed}")
