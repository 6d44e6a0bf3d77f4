"""apiserver.auth, pure parts: token signing and verification, RBAC rule evaluation (table),
the Node authorizer, ServiceAccount admission and upstream's 403 text."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from podnet.api import sharedjson
from podnet.api.errors import ApiError
from podnet.api.resources import BY_PLURAL
from podnet.apiserver.auth import serviceaccount
from podnet.apiserver.auth.attributes import Attributes, forbidden_error, resource_verb
from podnet.apiserver.auth.bootstrappolicy import CLUSTER_ROLE_BINDINGS, CLUSTER_ROLES
from podnet.apiserver.auth.node import NodeAuthorizer, PodIndex, admit_create
from podnet.apiserver.auth.rbac import RbacAuthorizer, RbacIndex, rule_allows
from podnet.apiserver.auth.tokens import BoundRef, TokenInvalid, TokenSigner
from podnet.apiserver.auth.user import UserInfo, node_user, service_account_user
from podnet.apiserver.bootstrap import bootstrap
from podnet.apiserver.registry import DeleteOptions, Registry
from podnet.config import ClusterConfig
from podnet.store import open_store
from podnet.testing.waiting import eventually

NOW = 1_800_000_000.0
SA = service_account_user("default", "x")


def signer(clock: float = NOW) -> TokenSigner:
    return TokenSigner(ec.generate_private_key(ec.SECP256R1()), clock=lambda: clock)


# -- tokens ------------------------------------------------------------------------------


def test_service_account_token_round_trip_with_upstream_claims() -> None:
    s = signer()
    bound = BoundRef("Pod", "web", "pod-uid", "node1", "node-uid")
    token, expires = s.issue_service_account_token("ns", "sa", "sa-uid", bound=bound)
    assert expires == NOW + 3607
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["sub"] == "system:serviceaccount:ns:sa"
    assert claims["aud"] == ["https://kubernetes.default.svc.cluster.local"]
    assert claims["kubernetes.io"] == {
        "namespace": "ns",
        "serviceaccount": {"name": "sa", "uid": "sa-uid"},
        "pod": {"name": "web", "uid": "pod-uid"},
        "node": {"name": "node1", "uid": "node-uid"},
    }
    verified = s.verify_service_account_token(token)
    assert (verified.namespace, verified.name, verified.uid, verified.bound) == (
        "ns",
        "sa",
        "sa-uid",
        bound,
    )


def test_tokens_are_refused_when_expired_forged_for_another_audience_or_alg_none() -> None:
    s = signer()
    token, _ = s.issue_service_account_token("ns", "sa", "u", expiration_seconds=600)
    assert TokenSigner(s.key, clock=lambda: NOW + 599).verify_service_account_token(token)
    with pytest.raises(TokenInvalid):
        TokenSigner(s.key, clock=lambda: NOW + 600).verify_service_account_token(token)
    with pytest.raises(TokenInvalid):
        signer().verify_service_account_token(token)  # another key
    with pytest.raises(TokenInvalid):
        s.verify_service_account_token(token, audiences=("vault",))
    with pytest.raises(TokenInvalid):  # a node credential is not a ServiceAccount token
        s.verify_service_account_token(s.issue_node_token("n1"))
    claims = jwt.decode(token, options={"verify_signature": False})
    unsigned = jwt.encode(claims, None, algorithm="none")
    with pytest.raises(TokenInvalid):
        s.verify_service_account_token(unsigned)
    expired = {**claims, "exp": 1000, "iat": 900, "nbf": 900}
    with pytest.raises(TokenInvalid):
        s.verify_service_account_token(jwt.encode(expired, s.key, algorithm="ES256"))


def test_node_tokens_name_their_node_and_the_key_persists(tmp_path: Path) -> None:
    first = TokenSigner.from_state_dir(tmp_path)
    assert (tmp_path / "sa.key").stat().st_mode & 0o777 == 0o600
    again = TokenSigner.from_state_dir(tmp_path)
    assert again.kid == first.kid
    assert again.verify_node_token(first.issue_node_token("node-1")) == "node-1"
    token, _ = first.issue_service_account_token("ns", "sa", "u")
    with pytest.raises(TokenInvalid):
        first.verify_node_token(token)


# -- RBAC --------------------------------------------------------------------------------


def attrs(
    verb: str,
    resource: str,
    namespace: str = "default",
    group: str = "",
    name: str = "",
    sub: str = "",
    user: UserInfo = SA,
) -> Attributes:
    return Attributes(user, verb, True, namespace, group, "v1", resource, sub, name)


RULE_CASES: list[tuple[dict[str, Any], Attributes, bool]] = [
    ({"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]}, attrs("get", "pods"), True),
    ({"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]}, attrs("list", "pods"), False),
    ({"verbs": ["*"], "apiGroups": [""], "resources": ["pods"]}, attrs("delete", "pods"), True),
    (
        {"verbs": ["get"], "apiGroups": ["apps"], "resources": ["pods"]},
        attrs("get", "pods"),
        False,
    ),
    (
        {"verbs": ["get"], "apiGroups": ["*"], "resources": ["deployments"]},
        attrs("get", "deployments", group="apps"),
        True,
    ),
    (
        {"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]},
        attrs("get", "pods", sub="log"),
        False,
    ),
    (
        {"verbs": ["get"], "apiGroups": [""], "resources": ["pods/log"]},
        attrs("get", "pods", sub="log"),
        True,
    ),
    (
        {"verbs": ["get"], "apiGroups": [""], "resources": ["*/log"]},
        attrs("get", "pods", sub="log"),
        True,
    ),
    (
        {"verbs": ["get"], "apiGroups": [""], "resources": ["*"]},
        attrs("get", "pods", sub="status"),
        True,
    ),
    (
        {"verbs": ["get"], "apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["a"]},
        attrs("get", "configmaps", name="a"),
        True,
    ),
    (
        {"verbs": ["get"], "apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["a"]},
        attrs("get", "configmaps", name="b"),
        False,
    ),
    (
        {"verbs": ["list"], "apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["a"]},
        attrs("list", "configmaps"),
        False,
    ),
    (
        {"verbs": ["get"], "nonResourceURLs": ["/healthz"]},
        Attributes(SA, "get", False, path="/healthz"),
        True,
    ),
    (
        {"verbs": ["get"], "nonResourceURLs": ["/apis/*"]},
        Attributes(SA, "get", False, path="/apis/apps/v1"),
        True,
    ),
    (
        {"verbs": ["get"], "nonResourceURLs": ["/apis"]},
        Attributes(SA, "get", False, path="/apis/apps"),
        False,
    ),
    (  # a resource rule never matches a non-resource request
        {"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]},
        Attributes(SA, "get", False, path="/healthz"),
        False,
    ),
]


@pytest.mark.parametrize(("rule", "request_attrs", "allowed"), RULE_CASES)
def test_rule_allows(rule: dict[str, Any], request_attrs: Attributes, allowed: bool) -> None:
    assert rule_allows(rule, request_attrs) is allowed


def policy_index(*extra: tuple[str, dict[str, Any]]) -> RbacIndex:
    index = RbacIndex()
    index.replace("clusterroles", json.loads(json.dumps(CLUSTER_ROLES)))
    index.replace("clusterrolebindings", json.loads(json.dumps(CLUSTER_ROLE_BINDINGS)))
    index.replace("roles", [])
    index.replace("rolebindings", [])
    for plural, obj in extra:
        index.apply(plural, "ADDED", obj)
    return index


def binding(
    kind: str, namespace: str, role_kind: str, role: str, *subjects: dict[str, str]
) -> dict[str, Any]:
    meta = {"name": f"b-{role}", **({"namespace": namespace} if namespace else {})}
    return {
        "kind": kind,
        "metadata": meta,
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role},
        "subjects": list(subjects),
    }


def test_rbac_bindings_to_users_groups_and_service_accounts() -> None:
    role = {
        "metadata": {"name": "pod-reader", "namespace": "default"},
        "rules": [{"verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods"]}],
    }
    index = policy_index(
        ("roles", role),
        (
            "rolebindings",
            binding(
                "RoleBinding",
                "default",
                "Role",
                "pod-reader",
                {"kind": "ServiceAccount", "name": "x"},
            ),
        ),
        (
            "clusterrolebindings",
            binding(
                "ClusterRoleBinding", "", "ClusterRole", "view", {"kind": "Group", "name": "qa"}
            ),
        ),
    )
    rbac = RbacAuthorizer(index)
    assert rbac.authorize(attrs("list", "pods"))[0]
    assert not rbac.authorize(attrs("list", "pods", namespace="other"))[0]
    assert not rbac.authorize(attrs("delete", "pods"))[0]
    alice = UserInfo("alice", "", ("qa", "system:authenticated"))
    # view is aggregated from system:aggregate-to-view: deployments are readable, not secrets
    assert rbac.authorize(attrs("list", "deployments", "ns", "apps", user=alice))[0]
    assert not rbac.authorize(attrs("get", "secrets", "ns", user=alice))[0]
    assert not rbac.authorize(attrs("create", "pods", "ns", user=alice))[0]
    # everyone authenticated may ask can-i and whoami, and read discovery
    assert rbac.authorize(attrs("create", "selfsubjectaccessreviews", "", "authorization.k8s.io"))[
        0
    ]
    assert rbac.authorize(Attributes(SA, "get", False, path="/apis/apps/v1"))[0]
    # removing the binding revokes at once
    index.apply("rolebindings", "DELETED", binding("RoleBinding", "default", "Role", "pod-reader"))
    assert not rbac.authorize(attrs("list", "pods"))[0]


def test_admin_aggregates_edit_and_view() -> None:
    index = policy_index()
    rules = index.aggregated_rules()
    assert all(r in rules["admin"] for r in rules["edit"])
    assert all(r in rules["edit"] for r in rules["view"])
    admin = RbacAuthorizer(
        policy_index(
            (
                "rolebindings",
                binding(
                    "RoleBinding", "team", "ClusterRole", "admin", {"kind": "User", "name": "bob"}
                ),
            )
        )
    )
    bob = UserInfo("bob", "", ("system:authenticated",))
    assert admin.authorize(
        attrs("create", "rolebindings", "team", "rbac.authorization.k8s.io", user=bob)
    )[0]
    assert admin.authorize(attrs("delete", "deployments", "team", "apps", user=bob))[0]
    assert not admin.authorize(attrs("delete", "deployments", "other", "apps", user=bob))[0]
    assert not admin.authorize(attrs("delete", "nodes", "", user=bob))[0]


def test_forbidden_message_is_upstreams() -> None:
    error = forbidden_error(attrs("delete", "pods", name="web"))
    assert error.code == 403 and error.reason == "Forbidden"
    assert error.message == (
        'pods "web" is forbidden: User "system:serviceaccount:default:x" cannot delete resource '
        '"pods" in API group "" in the namespace "default"'
    )
    assert forbidden_error(attrs("list", "pods")).message.startswith("pods is forbidden: User")
    cluster = forbidden_error(attrs("delete", "nodes", namespace="", name="n1"))
    assert cluster.message.endswith(
        'cannot delete resource "nodes" in API group "" at the cluster scope'
    )
    apps = forbidden_error(attrs("get", "deployments", group="apps", sub="scale", name="d"))
    assert apps.message.startswith('deployments.apps "d" is forbidden: ')
    assert 'resource "deployments/scale" in API group "apps"' in apps.message
    path = forbidden_error(Attributes(SA, "get", False, path="/metrics"))
    assert (
        path.message
        == 'forbidden: User "system:serviceaccount:default:x" cannot get path "/metrics"'
    )
    assert [
        resource_verb(m, n, w)
        for m, n, w in [
            ("GET", True, False),
            ("GET", False, False),
            ("GET", False, True),
            ("DELETE", False, False),
            ("POST", False, False),
        ]
    ] == ["get", "list", "watch", "deletecollection", "create"]


# -- Node authorizer ---------------------------------------------------------------------


def pod(name: str, node: str, **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "default"}, "spec": {"nodeName": node, **spec}}


def test_node_authorizer_limits_a_node_to_its_own_objects() -> None:
    pods = PodIndex()
    pods.replace(
        [
            pod(
                "mine",
                "n1",
                serviceAccountName="app",
                volumes=[{"name": "s", "secret": {"secretName": "db"}}],
                containers=[{"name": "c", "envFrom": [{"configMapRef": {"name": "cfg"}}]}],
            ),
            pod("theirs", "n2", volumes=[{"name": "s", "secret": {"secretName": "other"}}]),
        ]
    )
    node = NodeAuthorizer(pods)
    n1 = node_user("n1")

    def allowed(
        verb: str,
        resource: str,
        namespace: str = "default",
        name: str = "",
        sub: str = "",
        group: str = "",
    ) -> bool:
        return bool(node.authorize(attrs(verb, resource, namespace, group, name, sub, n1))[0])

    assert allowed("list", "pods", "") and allowed("watch", "services", "")
    assert allowed("patch", "nodes", "", "n1", "status") and not allowed(
        "patch", "nodes", "", "n2", "status"
    )
    assert allowed("update", "leases", "kube-node-lease", "n1", group="coordination.k8s.io")
    assert not allowed("update", "leases", "kube-node-lease", "n2", group="coordination.k8s.io")
    assert allowed("patch", "pods", name="mine", sub="status")
    assert not allowed("patch", "pods", name="theirs", sub="status")
    assert allowed("get", "secrets", name="db") and not allowed("get", "secrets", name="other")
    assert not allowed("list", "secrets")
    assert allowed("get", "configmaps", name="cfg")
    assert allowed("create", "serviceaccounts", name="app", sub="token")
    assert not allowed("create", "serviceaccounts", name="default", sub="token")
    assert not allowed("delete", "nodes", "", "n2")
    # the kubelet API of a node (nodes/proxy, ...) is not a node's to use, even its own
    assert not allowed("get", "nodes", "", "n1", "proxy")
    assert not allowed("create", "nodes", "", "n1", "proxy")
    assert not allowed("create", "deployments", group="apps")
    # a user who is not a node gets no opinion
    assert node.authorize(attrs("get", "secrets", name="db"))[0] is None
    with pytest.raises(ApiError) as refused:
        admit_create(n1, "nodes", {"metadata": {"name": "n2"}})
    assert refused.value.code == 403
    admit_create(n1, "nodes", {"metadata": {"name": "n1"}})


# -- ServiceAccount admission ------------------------------------------------------------


def test_service_account_admission_mounts_the_token_unless_told_not_to() -> None:
    p: dict[str, Any] = {"spec": {"containers": [{"name": "a"}], "initContainers": [{"name": "i"}]}}
    serviceaccount.admit_pod(p, {"metadata": {"name": "default"}})
    spec = p["spec"]
    assert spec["serviceAccountName"] == spec["serviceAccount"] == "default"
    (volume,) = spec["volumes"]
    assert volume["name"].startswith("kube-api-access-") and len(volume["name"]) == 21
    sources = volume["projected"]["sources"]
    assert sources[0] == {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}}
    for container in (*spec["containers"], *spec["initContainers"]):
        assert container["volumeMounts"] == [
            {"name": volume["name"], "readOnly": True, "mountPath": serviceaccount.MOUNT_PATH}
        ]
    off: dict[str, Any] = {"spec": {"containers": [{"name": "a"}]}}
    serviceaccount.admit_pod(off, {"automountServiceAccountToken": False})
    assert "volumes" not in off["spec"]
    pod_wins: dict[str, Any] = {
        "spec": {"automountServiceAccountToken": True, "containers": [{"name": "a"}]}
    }
    serviceaccount.admit_pod(pod_wins, {"automountServiceAccountToken": False})
    assert len(pod_wins["spec"]["volumes"]) == 1


def test_pods_with_the_same_references_share_their_sets() -> None:
    from podnet.apiserver.auth.node import pod_refs

    def pod(name: str, node: str, config: str) -> dict[str, Any]:
        volume = {"name": "v", "projected": {"sources": [{"configMap": {"name": config}}]}}
        return {
            "metadata": {"namespace": "ns", "name": name},
            "spec": {"nodeName": node, "volumes": [volume], "containers": [{"name": "c"}]},
        }

    one, two = (
        pod_refs(pod("a", "n1", "kube-root-ca.crt")),
        pod_refs(pod("b", "n2", "kube-root-ca.crt")),
    )
    assert one.configmaps == frozenset({"kube-root-ca.crt"})
    assert one.configmaps is two.configmaps and one.accounts is two.accounts
    assert one.secrets is two.secrets is one.claims  # the empty set, once
    other = pod_refs(pod("c", "n1", "special"))
    assert other.configmaps == frozenset({"special"}) and other.node == "n1"


@pytest.mark.asyncio
async def test_pod_index_follows_the_registry_watch() -> None:
    # PodIndex.run: listed, then every pod event (decoded with json.loads) keeps the index
    # current; the strings it keeps are the shared ones (sharedjson)
    registry = Registry(open_store("memory", "/nonexistent"), ClusterConfig(), ca_pem=b"-")
    await bootstrap(registry, "127.0.0.1", 6443)
    pods, stop = PodIndex(), asyncio.Event()
    task = asyncio.create_task(pods.run(registry, stop))
    try:
        await asyncio.wait_for(pods.synced.wait(), 5)
        body = pod("watched", "n7", volumes=[{"name": "s", "secret": {"secretName": "db"}}])
        body["spec"]["containers"] = [{"name": "c", "image": "busybox"}]
        await registry.create(BY_PLURAL["pods"], "default", body)

        await eventually(lambda: pods.bound_to("n7", "default", "watched"), what="the pod")
        assert pods.references("n7", "default", "secrets", "db")
        (key,) = [k for k in pods.pods if k[1] == "watched"]
        assert key[1] is sharedjson.share("watched")
        assert pods.pods[key].node is sharedjson.share("n7")
        await registry.patch(
            BY_PLURAL["pods"],
            "default",
            "watched",
            "merge",
            {"status": {"phase": "Running"}},
            subresource="status",
        )
        await registry.delete(BY_PLURAL["pods"], "default", "watched", DeleteOptions(0))
        await eventually(lambda: not pods.bound_to("n7", "default", "watched"), what="its delete")
        assert not pods.references("n7", "default", "secrets", "db")
    finally:
        stop.set()
        await task
        await registry.close()


@pytest.mark.asyncio
async def test_pod_index_follows_the_shared_informer_and_hands_back() -> None:
    # while the controllers run in the server, PodIndex takes pod create/bind/delete from
    # their shared pod informer and closes its own watch; when they stop it watches again
    from podnet.apiserver.local import LocalApi
    from podnet.controllers.informer import InformerFactory

    registry = Registry(open_store("memory", "/nonexistent"), ClusterConfig(), ca_pem=b"-")
    await bootstrap(registry, "127.0.0.1", 6443)
    stop = asyncio.Event()
    api = LocalApi(registry, stop, watch_managed_fields=False)
    pods = PodIndex()
    task = asyncio.create_task(pods.run(registry, stop))

    def own_watch() -> bool:
        return any(t.get_name() == "pod-index" for t in asyncio.all_tasks())

    def unbound(name: str, secret: str) -> dict[str, Any]:
        body = pod(name, "", volumes=[{"name": "s", "secret": {"secretName": secret}}])
        body["spec"]["containers"] = [{"name": "c", "image": "busybox"}]
        return body

    async def bind(name: str, node: str) -> None:
        binding = {"metadata": {"name": name}, "target": {"kind": "Node", "name": node}}
        await api.create("pods", binding, "default", subresource="binding")

    try:
        await asyncio.wait_for(pods.synced.wait(), 5)
        await api.create("pods", unbound("before", "early"), "default")
        await bind("before", "n1")
        await eventually(lambda: pods.bound_to("n1", "default", "before"), what="own watch")

        informers = InformerFactory(api)
        informer = informers.informer("pods")
        undo = pods.follow(informer)
        await asyncio.sleep(0.1)  # the index sees the informer before it has listed
        assert own_watch() and len(informer) == 0
        informers.start()
        await eventually(lambda: not own_watch(), what="the hand-over to the informer")
        assert pods.references("n1", "default", "secrets", "early")  # rebuilt from its cache

        await api.create("pods", unbound("shared", "db"), "default")
        await eventually(lambda: informer.get("default/shared") is not None, what="the create")
        assert not any(key[1] == "shared" for key in pods.pods)  # not bound: not indexed
        await bind("shared", "n7")  # an update of the pod
        await eventually(lambda: pods.bound_to("n7", "default", "shared"), what="the binding")
        assert pods.references("n7", "default", "secrets", "db")
        assert not pods.references("n1", "default", "secrets", "db")
        await api.delete("pods", "shared", "default", grace_period_seconds=0)
        await eventually(lambda: not pods.bound_to("n7", "default", "shared"), what="the delete")
        assert not pods.references("n7", "default", "secrets", "db")
        assert not own_watch()

        await informers.stop()
        undo()
        await eventually(own_watch, what="the own watch again")
        await api.create("pods", unbound("after", "late"), "default")
        await bind("after", "n2")
        await eventually(lambda: pods.bound_to("n2", "default", "after"), what="own watch again")
        assert pods.references("n2", "default", "secrets", "late")
        assert pods.bound_to("n1", "default", "before")
    finally:
        stop.set()
        await task
        await registry.close()
