#!/usr/bin/env python3
"""Regenerate `src/podnet/api/openapi_schemas.json`: upstream's OpenAPI schemas of every kind
podnet serves, the one source of `api.schema` (type checks, known fields, list types for
server-side apply) and of the `/openapi/v3` documents (`kubectl explain`, `--validate`).

Where the data comes from: Kubernetes publishes its OpenAPI spec (`api/openapi-spec/` in the
kubernetes repository, Apache-2.0). The `kubernetes-validate` package on PyPI carries it, per
release, as JSON Schema (`kubernetes-json-schema/v1.32.0-local/_definitions.json`): every
definition with its descriptions, `required`, formats, enums, `x-kubernetes-group-version-kind`,
`x-kubernetes-list-type` / `-list-map-keys` / `-map-type` and the patch strategies and merge
keys. This script turns that back into OpenAPI v3 component schemas the way kube-apiserver
writes them (`#/components/schemas/<name>`, a described reference as `allOf: [{$ref}]`, no
JSON-Schema `null` types, IntOrString and Quantity as `oneOf` their types) and keeps only
the definitions the served kinds reach.

The `kubernetes` Python client was the other candidate: its models carry descriptions as
docstrings and `openapi_types`, but no list types, map keys, patch strategies, formats or
`required`, all of which server-side apply and validation need.

Run (reproducible; nothing is added to the project's dependencies):

    uv run --no-project --with kubernetes-validate==1.37.0 python scripts/gen_openapi_schemas.py
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from podnet.api.resources import RESOURCES  # noqa: E402

KUBERNETES_VERSION = "v1.32.0"
OUTPUT = ROOT / "src" / "podnet" / "api" / "openapi_schemas.json"
REF_PREFIX = "#/components/schemas/"

# meta/v1 types every document needs (request bodies, answers), besides the served kinds
EXTRA_ROOTS = (
    "io.k8s.apimachinery.pkg.apis.meta.v1.Status",
    "io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions",
    "io.k8s.apimachinery.pkg.apis.meta.v1.Patch",
    "io.k8s.apimachinery.pkg.apis.meta.v1.WatchEvent",
)

# The JSON-Schema converter dropped these two's descriptions and format. Upstream's own v3
# schemas (kube-openapi writes `OpenAPIV3OneOfTypes` as `oneOf`; no `type`, so `kubectl
# explain` names them <IntOrString> and <Quantity>):
SPECIAL = {
    "io.k8s.apimachinery.pkg.util.intstr.IntOrString": {
        "description": "IntOrString is a type that can hold an int32 or a string.  When used in "
        "JSON or YAML marshalling and unmarshalling, it produces or consumes the inner type.  "
        "This allows you to have, for example, a JSON field that can accept a name or number.",
        "format": "int-or-string",
        "oneOf": [{"type": "integer"}, {"type": "string"}],
    },
    "io.k8s.apimachinery.pkg.api.resource.Quantity": {
        "description": "Quantity is a fixed-point representation of a number. It provides "
        "convenient marshaling/unmarshaling in JSON and YAML, in addition to String() and "
        "AsInt64() accessors.\n\nThe serialization format is:\n\n``` <quantity>        ::= "
        '<signedNumber><suffix>\n\n\t(Note that <suffix> may be empty, from the "" case in '
        "<decimalSI>.)\n\n<digit>           ::= 0 | 1 | ... | 9 <digits>          ::= <digit> | "
        "<digit><digits> <number>          ::= <digits> | <digits>.<digits> | <digits>. | "
        '<digits> <sign>            ::= "+" | "-" <signedNumber>    ::= <number> | '
        "<sign><number> <suffix>          ::= <binarySI> | <decimalExponent> | <decimalSI> "
        "<binarySI>        ::= Ki | Mi | Gi | Ti | Pi | Ei\n\n\t(International System of units; "
        'See: http://physics.nist.gov/cuu/Units/binary.html)\n\n<decimalSI>       ::= m | "" | '
        "k | M | G | T | P | E\n\n\t(Note that 1024 = 1Ki but 1000 = 1k; I didn't choose the "
        'capitalization.)\n\n<decimalExponent> ::= "e" <signedNumber> | "E" <signedNumber> '
        "```\n\nNo matter which of the three exponent forms is used, no quantity may represent "
        "a number greater than 2^63-1 in magnitude, nor may it have more than 3 decimal places. "
        "Numbers larger or more precise will be capped or rounded up. (E.g.: 0.1m will rounded "
        "up to 1m.) This may be extended in the future if we require larger or smaller "
        "quantities.",
        "oneOf": [{"type": "string"}, {"type": "number"}],
    },
}


def _find_definitions() -> Path:
    try:
        import kubernetes_validate  # type: ignore[import-not-found]
    except ImportError:
        raise SystemExit(
            "kubernetes-validate is not installed; run: uv run --no-project --with "
            "kubernetes-validate==1.37.0 python scripts/gen_openapi_schemas.py"
        ) from None
    base = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    return base / f"{KUBERNETES_VERSION}-local" / "_definitions.json"


def _name_of(ref: str) -> str:
    return ref.rsplit("/", 1)[-1]


def _convert(node: Any, top_level_kind: bool = False) -> Any:
    """One JSON-Schema node back to OpenAPI v3 as kube-apiserver writes it."""
    if isinstance(node, list):
        return [_convert(item) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    ref = node.get("$ref")
    for key, value in node.items():
        if key == "$ref":
            continue
        if key == "type" and isinstance(value, list):
            kinds = [v for v in value if v != "null"]
            value = kinds[0] if len(kinds) == 1 else kinds
        if key == "properties":
            value = {
                name: _convert_property(name, prop, top_level_kind) for name, prop in value.items()
            }
        elif key in ("items", "additionalProperties"):
            value = _convert(value)
        out[key] = value
    if ref is not None:
        target = {"$ref": REF_PREFIX + _name_of(ref)}
        if len(out) == 0:
            return target
        out["allOf"] = [target]
    return dict(sorted(out.items()))


def _convert_property(name: str, prop: Any, top_level_kind: bool) -> Any:
    converted = _convert(prop)
    if top_level_kind and name in ("apiVersion", "kind") and isinstance(converted, dict):
        converted.pop("enum", None)  # the JSON-Schema converter pins these; upstream does not
    return converted


def _references(node: Any) -> set[str]:
    """The definitions a JSON-Schema node refers to, anywhere inside it."""
    return set(re.findall(r'"\$ref": "#/\$defs/([^"]+)"', json.dumps(node)))


def _gvks(schema: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [
        (g.get("group", ""), g.get("version", ""), g.get("kind", ""))
        for g in schema.get("x-kubernetes-group-version-kind", [])
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--definitions", type=Path, help="kubernetes-validate's _definitions.json")
    args = parser.parse_args()
    source = args.definitions or _find_definitions()
    definitions: dict[str, Any] = json.loads(source.read_text())["$defs"]
    by_gvk = {gvk: name for name, schema in definitions.items() for gvk in _gvks(schema)}

    roots = set(EXTRA_ROOTS)
    for res in RESOURCES:
        for kind in (res.kind, f"{res.kind}List"):
            name = by_gvk.get((res.group, res.version, kind))
            if name is None and kind == res.kind:
                raise SystemExit(f"no upstream schema for {res.group}/{res.version} {kind}")
            if name is not None:
                roots.add(name)
        for sub in res.subresources:
            name = by_gvk.get((sub.group or res.group, sub.version or res.version, sub.kind))
            if name is not None:
                roots.add(name)

    schemas: dict[str, Any] = {}
    pending = sorted(roots)
    while pending:
        name = pending.pop()
        if name in schemas:
            continue
        if name in SPECIAL:
            schemas[name] = SPECIAL[name]
            continue
        raw = definitions[name]
        schemas[name] = _convert(raw, top_level_kind=bool(_gvks(raw)))
        pending.extend(sorted(_references(raw) - set(schemas)))

    document = {
        "kubernetesVersion": KUBERNETES_VERSION,
        "source": f"kubernetes-validate {KUBERNETES_VERSION}-local/_definitions.json",
        "schemas": dict(sorted(schemas.items())),
    }
    OUTPUT.write_text(json.dumps(document, indent=0, sort_keys=True, ensure_ascii=False) + "\n")
    print(f"wrote {len(schemas)} schemas to {OUTPUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
