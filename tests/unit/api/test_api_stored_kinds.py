"""The kinds podnet stores without running them (RBAC, Ingress, PDB, HPA, APIService, claims,
quotas, ...): every user manifest is valid as written, upstream's causes for what is not,
defaults, `kubectl get` columns, strict field checks, strategic merge patches. (Totality on
garbage input is `test_api_validation`'s, over these manifests too.)"""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import pytest

from podnet.api.defaults import apply_defaults
from podnet.api.patch import apply_strategic_merge_patch
from podnet.api.resources import BY_KIND, resource
from podnet.api.tables import to_table
from podnet.api.validation import quantity_value, unknown_fields, validate
from podnet.apiserver.strategies.batch import generate_selector
from podnet.testing.manifests import user_manifests

Obj = dict[str, Any]
NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
CREATED = "2024-05-01T11:56:40Z"
MANIFESTS = {m["kind"]: m for m in user_manifests("shop")}


def sample(kind: str) -> Obj:
    return copy.deepcopy(MANIFESTS[kind])


def check(obj: Obj, old: Obj | None = None) -> list[tuple[str, str, str]]:
    res = BY_KIND[obj["kind"]]
    obj = apply_defaults(res, obj)
    if obj["kind"] == "Job":  # the server generates a Job's selector before validating it
        obj["metadata"]["uid"] = "0a1b"
        generate_selector(obj)
    if old is not None:
        old = apply_defaults(res, old)
    return [(c.field, c.reason, c.message) for c in validate(res, obj, old)]


@pytest.mark.parametrize("kind", sorted(MANIFESTS))
def test_every_user_manifest_is_valid_and_known(kind: str) -> None:
    obj = sample(kind)
    assert check(obj) == []
    assert unknown_fields(BY_KIND[kind], obj) == []
    # the strategic merge patch kubectl apply sends works for every kind
    patched = apply_strategic_merge_patch(obj, {"metadata": {"labels": {"x": "y"}}}, kind)
    assert patched["metadata"]["labels"] == {"x": "y"}


@pytest.mark.parametrize(
    ("text", "value"),
    [("1Gi", 2**30), ("500m", 0.5), ("2", 2), ("1.5k", 1500), ("3e2", 300), (7, 7), ("x", None)],
)
def test_quantities(text: Any, value: float | None) -> None:
    parsed = quantity_value(text)
    assert (None if parsed is None else float(parsed)) == value


def test_rbac_rules_bindings_and_names() -> None:
    role = sample("Role")
    role["metadata"]["name"] = "system:controller:x"  # path segments, not DNS names
    role["rules"] = [
        {"apiGroups": [""], "resources": ["pods"]},
        {"nonResourceURLs": ["/metrics"], "verbs": ["get"]},
        {"verbs": ["get"]},
    ]
    assert check(role) == [
        (
            "rules[0].verbs",
            "FieldValueRequired",
            "Required value: verbs must contain at least one value",
        ),
        (
            "rules[1].nonResourceURLs",
            "FieldValueInvalid",
            'Invalid value: ["/metrics"]: namespaced rules cannot apply to non-resource URLs',
        ),
        (
            "rules[2].apiGroups",
            "FieldValueRequired",
            "Required value: resource rules must supply at least one api group",
        ),
        (
            "rules[2].resources",
            "FieldValueRequired",
            "Required value: resource rules must supply at least one resource",
        ),
    ]
    role["metadata"]["name"] = "a/b"
    role["rules"] = []
    assert check(role) == [
        ("metadata.name", "FieldValueInvalid", "Invalid value: \"a/b\": may not contain '/'")
    ]
    crb = sample("ClusterRoleBinding")
    crb["roleRef"]["kind"] = "Role"
    crb["subjects"] = [{"kind": "ServiceAccount", "name": "x"}, {"kind": "Robot", "name": "r"}]
    assert [c[:2] for c in check(crb)] == [
        ("roleRef.kind", "FieldValueNotSupported"),
        ("subjects[0].namespace", "FieldValueRequired"),
        ("subjects[1].kind", "FieldValueNotSupported"),
    ]
    binding = sample("RoleBinding")
    changed = copy.deepcopy(binding)
    changed["roleRef"]["name"] = "other"
    assert check(changed, binding) == [
        (
            "roleRef",
            "FieldValueInvalid",
            'Invalid value: {"apiGroup":"rbac.authorization.k8s.io","kind":"Role",'
            '"name":"other"}: cannot change roleRef',
        )
    ]


def test_rbac_defaults_fill_api_groups() -> None:
    binding = {
        "metadata": {"name": "b", "namespace": "d"},
        "roleRef": {"kind": "ClusterRole", "name": "view"},
        "subjects": [{"kind": "User", "name": "jane"}, {"kind": "ServiceAccount", "name": "x"}],
    }
    out = apply_defaults(resource("rolebindings"), binding)
    assert out["roleRef"]["apiGroup"] == "rbac.authorization.k8s.io"
    assert [s.get("apiGroup") for s in out["subjects"]] == ["rbac.authorization.k8s.io", None]


def test_ingress_rules() -> None:
    ing = sample("Ingress")
    rule = ing["spec"]["rules"][0]
    rule["host"] = "10.0.0.1"
    path = rule["http"]["paths"][0]
    path["pathType"] = "Exact"
    path["path"] = "relative"
    path["backend"]["service"]["port"] = {}
    assert check(ing) == [
        (
            "spec.rules[0].host",
            "FieldValueInvalid",
            'Invalid value: "10.0.0.1": must be a DNS name, not an IP address',
        ),
        (
            "spec.rules[0].http.paths[0].path",
            "FieldValueInvalid",
            'Invalid value: "relative": must be an absolute path',
        ),
        (
            "spec.rules[0].http.paths[0].backend.service.port",
            "FieldValueRequired",
            "Required value: port name or number is required",
        ),
    ]
    assert [c[:2] for c in check({**ing, "spec": {}})] == [("spec", "FieldValueInvalid")]


def test_ingress_class_defaults_and_immutable_controller() -> None:
    ic = sample("IngressClass")
    ic["spec"]["parameters"] = {"kind": "Params", "name": "p"}
    assert apply_defaults(resource("ingressclasses"), ic)["spec"]["parameters"]["scope"] == (
        "Cluster"
    )
    changed = copy.deepcopy(ic)
    changed["spec"]["controller"] = "example.com/other"
    assert [c[:2] for c in check(changed, ic)] == [("spec.controller", "FieldValueInvalid")]


def test_pdb_and_hpa_rules() -> None:
    pdb = sample("PodDisruptionBudget")
    pdb["spec"]["maxUnavailable"] = "150%"
    assert [c[:2] for c in check(pdb)] == [
        ("spec.maxUnavailable", "FieldValueInvalid"),
        ("spec", "FieldValueInvalid"),
    ]
    assert check(pdb)[1][2].endswith("minAvailable and maxUnavailable cannot be both set")
    hpa = sample("HorizontalPodAutoscaler")
    hpa["spec"]["minReplicas"] = 5
    hpa["spec"]["maxReplicas"] = 3
    assert check(hpa) == [
        (
            "spec.maxReplicas",
            "FieldValueInvalid",
            "Invalid value: 3: must be greater than or equal to `minReplicas`",
        )
    ]
    bare: Obj = {
        "metadata": {"name": "h", "namespace": "d"},
        "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "w"}, "maxReplicas": 3},
    }
    defaulted = apply_defaults(resource("horizontalpodautoscalers"), bare)
    assert defaulted["spec"]["minReplicas"] == 1
    assert defaulted["spec"]["metrics"] == [
        {
            "type": "Resource",
            "resource": {
                "name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": 80},
            },
        }
    ]


def test_claims_quotas_limits_and_api_services() -> None:
    pvc = sample("PersistentVolumeClaim")
    pvc["spec"] = {"accessModes": ["ReadWriteSometimes"], "resources": {"requests": {}}}
    assert [c[:2] for c in check(pvc)] == [
        ("spec.accessModes", "FieldValueNotSupported"),
        ("spec.resources[storage]", "FieldValueRequired"),
    ]
    claim = sample("PersistentVolumeClaim")
    bigger = copy.deepcopy(claim)
    bigger["spec"]["resources"]["requests"]["storage"] = "2Gi"
    assert [c[:2] for c in check(bigger, claim)] == [("spec", "FieldValueForbidden")]
    assert apply_defaults(resource("persistentvolumeclaims"), claim)["spec"]["volumeMode"] == (
        "Filesystem"
    )
    lr = sample("LimitRange")
    lr["spec"]["limits"][0]["default"]["cpu"] = "4"  # above max
    assert check(lr) == [
        (
            "spec.limits[0].default[cpu]",
            "FieldValueInvalid",
            'Invalid value: "4": default value 4 is greater than max value 2',
        )
    ]
    quota = sample("ResourceQuota")
    quota["spec"]["hard"]["pods"] = "-1"
    quota["spec"]["scopes"] = ["Sometimes"]
    assert [c[:2] for c in check(quota)] == [
        ("spec.hard[pods]", "FieldValueInvalid"),
        ("spec.scopes[0]", "FieldValueNotSupported"),
    ]
    svc = sample("APIService")
    svc["metadata"]["name"] = "v1.wrong"
    svc["spec"]["versionPriority"] = 0
    assert [c[:2] for c in check(svc)] == [
        ("metadata.name", "FieldValueInvalid"),
        ("spec.versionPriority", "FieldValueInvalid"),
    ]


def test_controller_revision_data_is_immutable() -> None:
    cr: Obj = {
        "apiVersion": "apps/v1",
        "kind": "ControllerRevision",
        "metadata": {"name": "web-5d4f", "namespace": "d"},
        "data": {"spec": {"template": {}}},
        "revision": 1,
    }
    assert check(cr) == []
    changed = copy.deepcopy(cr)
    changed["data"] = {"spec": {}}
    assert [c[:2] for c in check(changed, cr)] == [("data", "FieldValueInvalid")]
    assert [c[:2] for c in check({**cr, "data": None, "revision": -1})] == [
        ("revision", "FieldValueInvalid"),
        ("data", "FieldValueRequired"),
    ]


# --- kubectl get columns --------------------------------------------------------------------


def render(kind: str, objs: list[Obj]) -> str:
    table = to_table(BY_KIND[kind], objs, NOW)
    lines = ["\t".join(c["name"].upper() for c in table["columnDefinitions"])]
    for row in table["rows"]:
        assert len(row["cells"]) == len(table["columnDefinitions"])
        lines.append("\t".join(str(c) for c in row["cells"]))
    return "\n".join(lines)


def created(obj: Obj, **status: Any) -> Obj:
    obj = apply_defaults(BY_KIND[obj["kind"]], obj)
    obj["metadata"]["creationTimestamp"] = CREATED
    if status:
        obj["status"] = status
    return obj


def test_stored_kinds_tables_golden() -> None:
    assert render("Role", [created(sample("Role"))]) == (
        "NAME\tCREATED AT\npod-reader\t2024-05-01T11:56:40Z"
    )
    assert render("RoleBinding", [created(sample("RoleBinding"))]) == (
        "NAME\tROLE\tAGE\tUSERS\tGROUPS\tSERVICEACCOUNTS\n"
        "operator-reads-pods\tRole/pod-reader\t3m20s\tjane\t\tshop/operator"
    )
    assert render("Ingress", [created(sample("Ingress"))]) == (
        "NAME\tCLASS\tHOSTS\tADDRESS\tPORTS\tAGE\n"
        "shop\tshop-nginx\tshop.example.com\t\t80, 443\t3m20s"
    )
    assert render("IngressClass", [created(sample("IngressClass"))]) == (
        "NAME\tCONTROLLER\tPARAMETERS\tAGE\nshop-nginx\tk8s.io/ingress-nginx\t<none>\t3m20s"
    )
    pdb = created(sample("PodDisruptionBudget"), disruptionsAllowed=2)
    assert render("PodDisruptionBudget", [pdb]) == (
        "NAME\tMIN AVAILABLE\tMAX UNAVAILABLE\tALLOWED DISRUPTIONS\tAGE\nshop\t1\tN/A\t2\t3m20s"
    )
    hpa = created(sample("HorizontalPodAutoscaler"), currentReplicas=2)
    assert render("HorizontalPodAutoscaler", [hpa]) == (
        "NAME\tREFERENCE\tTARGETS\tMINPODS\tMAXPODS\tREPLICAS\tAGE\n"
        "shop\tDeployment/shop\tcpu: <unknown>/70%\t2\t10\t2\t3m20s"
    )
    quota = created(sample("ResourceQuota"), used={"pods": "3"})
    assert render("ResourceQuota", [quota]) == (
        "NAME\tAGE\tREQUEST\tLIMIT\n"
        "compute\t3m20s\tpods: 3/20, requests.cpu: 0/4\tlimits.memory: 0/8Gi"
    )
    pvc = created(sample("PersistentVolumeClaim"), phase="Pending")
    assert render("PersistentVolumeClaim", [pvc]) == (
        "NAME\tSTATUS\tVOLUME\tCAPACITY\tACCESS MODES\tSTORAGECLASS\tVOLUMEATTRIBUTESCLASS\tAGE"
        "\tVOLUMEMODE\n"
        "data\tPending\t\t\t\t\t<unset>\t3m20s\tFilesystem"
    )
    svc = created(sample("APIService"))
    svc["status"] = {
        "conditions": [{"type": "Available", "status": "False", "reason": "ServiceNotFound"}]
    }
    assert render("APIService", [svc]) == (
        "NAME\tSERVICE\tAVAILABLE\tAGE\n"
        "v1beta1.shop.example.com\tshop/shop-api\tFalse (ServiceNotFound)\t3m20s"
    )
    cr: Obj = {
        "kind": "ControllerRevision",
        "metadata": {
            "name": "web-6d9f",
            "creationTimestamp": CREATED,
            "ownerReferences": [
                {"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "web", "controller": True}
            ],
        },
        "revision": 3,
    }
    assert render("ControllerRevision", [cr]) == (
        "NAME\tCONTROLLER\tREVISION\tAGE\nweb-6d9f\tdaemonset.apps/web\t3\t3m20s"
    )
