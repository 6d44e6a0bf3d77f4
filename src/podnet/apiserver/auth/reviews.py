"""The review APIs and TokenRequest: create-only resources that answer instead of storing.

What belongs here (upstream `pkg/registry/authentication|authorization/*`):
- `authentication.k8s.io/v1` TokenReview (is this token valid, whose is it) and SelfSubjectReview
  (`kubectl auth whoami`);
- `authorization.k8s.io/v1` SubjectAccessReview, LocalSubjectAccessReview,
  SelfSubjectAccessReview (`kubectl auth can-i`) and SelfSubjectRulesReview (`can-i --list`);
- `serviceaccounts/<name>/token` (TokenRequest, `kubectl create token`): a bound token for an
  existing ServiceAccount, optionally bound to a pod of that ServiceAccount.
Every answer echoes the request with a `status`, as upstream does; nothing is stored.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from podnet.api.errors import ApiError, bad_request, forbidden, not_found
from podnet.api.meta import rfc3339
from podnet.api.resources import BY_PLURAL
from podnet.apiserver.auth import node as node_auth
from podnet.apiserver.auth import tokens
from podnet.apiserver.auth.attributes import Attributes
from podnet.apiserver.auth.chain import Auth
from podnet.apiserver.auth.rbac import rule_allows
from podnet.apiserver.auth.user import SYSTEM_MASTERS, UserInfo

Obj = dict[str, Any]
PLURALS = (
    "tokenreviews",
    "selfsubjectreviews",
    "subjectaccessreviews",
    "localsubjectaccessreviews",
    "selfsubjectaccessreviews",
    "selfsubjectrulesreviews",
)
KINDS = {
    "tokenreviews": ("authentication.k8s.io/v1", "TokenReview"),
    "selfsubjectreviews": ("authentication.k8s.io/v1", "SelfSubjectReview"),
    "subjectaccessreviews": ("authorization.k8s.io/v1", "SubjectAccessReview"),
    "localsubjectaccessreviews": ("authorization.k8s.io/v1", "LocalSubjectAccessReview"),
    "selfsubjectaccessreviews": ("authorization.k8s.io/v1", "SelfSubjectAccessReview"),
    "selfsubjectrulesreviews": ("authorization.k8s.io/v1", "SelfSubjectRulesReview"),
}


def _spec(body: Any) -> Obj:
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    spec = body.get("spec") or {}
    if not isinstance(spec, dict):
        raise bad_request("spec must be an object")
    return spec


def _answer(plural: str, body: Any, spec: Obj, status: Obj, namespace: str | None = None) -> Obj:
    api_version, kind = KINDS[plural]
    meta = dict((body.get("metadata") if isinstance(body, dict) else None) or {})
    meta.setdefault("creationTimestamp", None)
    if namespace:
        meta["namespace"] = namespace
    return {
        "kind": kind,
        "apiVersion": api_version,
        "metadata": meta,
        "spec": spec,
        "status": status,
    }


def attributes_from(spec: Obj, user: UserInfo) -> Attributes:
    resource = spec.get("resourceAttributes")
    if isinstance(resource, dict):
        return Attributes(
            user,
            str(resource.get("verb") or ""),
            True,
            str(resource.get("namespace") or ""),
            str(resource.get("group") or ""),
            str(resource.get("version") or ""),
            str(resource.get("resource") or ""),
            str(resource.get("subresource") or ""),
            str(resource.get("name") or ""),
        )
    nonresource = spec.get("nonResourceAttributes")
    if isinstance(nonresource, dict):
        return Attributes(
            user, str(nonresource.get("verb") or ""), False, path=str(nonresource.get("path") or "")
        )
    raise ApiError(
        422,
        "Invalid",
        "spec: Invalid value: exactly one of nonResourceAttributes or resourceAttributes "
        "must be specified",
    )


async def _access(auth: Auth, attrs: Attributes) -> Obj:
    allowed, reason = await auth.decide(attrs)
    status: Obj = {"allowed": allowed}
    if reason:
        status["reason"] = reason
    return status


def _rules(auth: Auth, user: UserInfo, namespace: str) -> Obj:
    resource_rules: list[Obj] = []
    nonresource_rules: list[Obj] = []
    for rule in auth.rbac_index.rules_for(user, namespace):
        if rule.get("nonResourceURLs"):
            entry = {"verbs": rule.get("verbs") or [], "nonResourceURLs": rule["nonResourceURLs"]}
            if entry not in nonresource_rules:
                nonresource_rules.append(entry)
            continue
        entry = {
            k: rule[k] for k in ("verbs", "apiGroups", "resources", "resourceNames") if rule.get(k)
        }
        if entry not in resource_rules:
            resource_rules.append(entry)
    if SYSTEM_MASTERS in user.groups and not any(
        rule_allows(r, Attributes(user, "*", True, namespace, "*", "", "*")) for r in resource_rules
    ):
        resource_rules.insert(0, {"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]})
    # the Node authorizer's graph cannot be listed as rules (upstream marks it incomplete too)
    incomplete = user.name.startswith("system:node:")
    return {
        "resourceRules": resource_rules,
        "nonResourceRules": nonresource_rules,
        "incomplete": incomplete,
    }


async def serve(auth: Auth, user: UserInfo, plural: str, namespace: str | None, body: Any) -> Obj:
    spec = _spec(body)
    if plural == "selfsubjectreviews":
        return _answer(plural, body, spec, {"userInfo": user.to_json()})
    if plural == "tokenreviews":
        token = str(spec.get("token") or "")
        if not token:
            raise ApiError(422, "Invalid", "spec.token: Required value: token must be set")
        try:
            reviewed = await auth.authenticate(f"Bearer {token}")
        except ApiError:
            return _answer(plural, body, spec, {"authenticated": False, "error": "invalid token"})
        audiences = list(spec.get("audiences") or tokens.API_AUDIENCES)
        status = {"authenticated": True, "user": reviewed.to_json(), "audiences": audiences}
        return _answer(plural, body, spec, status)
    if plural == "selfsubjectaccessreviews":
        return _answer(plural, body, spec, await _access(auth, attributes_from(spec, user)))
    if plural == "selfsubjectrulesreviews":
        return _answer(plural, body, spec, _rules(auth, user, str(spec.get("namespace") or "")))
    # subjectaccessreviews / localsubjectaccessreviews: about someone else
    extra = {k: tuple(v) for k, v in (spec.get("extra") or {}).items() if isinstance(v, list)}
    subject = UserInfo(
        str(spec.get("user") or ""),
        str(spec.get("uid") or ""),
        tuple(spec.get("groups") or ()),
        extra,
    )
    attrs = attributes_from(spec, subject)
    if plural == "localsubjectaccessreviews":
        if attrs.namespace and attrs.namespace != namespace:
            raise ApiError(
                422,
                "Invalid",
                f"spec.resourceAttributes.namespace: Invalid value: {attrs.namespace!r}: must "
                f"match metadata.namespace {namespace!r}",
            )
        attrs = Attributes(**{**_fields(attrs), "namespace": namespace or ""})
    return _answer(plural, body, spec, await _access(auth, attrs), namespace)


def _fields(attrs: Attributes) -> dict[str, Any]:
    return {name: getattr(attrs, name) for name in Attributes.__slots__}


async def token_request(
    auth: Auth, user: UserInfo, namespace: str, name: str, body: Any, now: dt.datetime
) -> Obj:
    """TokenRequest for serviceaccount `namespace/name` (201 with `status.token`)."""
    spec = _spec(body)
    registry = auth.registry
    try:
        account = await registry.get(BY_PLURAL["serviceaccounts"], namespace, name)
    except ApiError as exc:
        if exc.code == 404:
            raise not_found("serviceaccounts", name) from None
        raise
    audiences = tuple(spec.get("audiences") or tokens.API_AUDIENCES)
    requested = spec.get("expirationSeconds")
    seconds = 3600 if requested is None else requested
    if not isinstance(seconds, int) or seconds < tokens.MIN_EXPIRATION:
        raise ApiError(
            422,
            "Invalid",
            f'TokenRequest.authentication.k8s.io "{name}" is invalid: spec.expirationSeconds: '
            "Invalid value: may not specify a duration less than 10 minutes",
        )
    if seconds > 1 << 32:
        raise ApiError(
            422,
            "Invalid",
            f'TokenRequest.authentication.k8s.io "{name}" is invalid: spec.expirationSeconds: '
            "Invalid value: may not specify a duration larger than 2^32 seconds",
        )
    seconds = min(seconds, tokens.MAX_EXPIRATION)
    node_auth.admit_token_request(user, auth.pods, namespace, body)
    bound = None
    ref = spec.get("boundObjectRef")
    if isinstance(ref, dict) and ref:
        if ref.get("kind") != "Pod":
            raise bad_request(
                f"cannot bind a token to a {ref.get('kind')!r}: podnet binds tokens to Pods"
            )
        try:
            pod = await registry.get(BY_PLURAL["pods"], namespace, str(ref.get("name")))
        except ApiError as exc:
            if exc.code == 404:
                raise not_found("pods", str(ref.get("name"))) from None
            raise
        pod_uid = pod["metadata"]["uid"]
        if ref.get("uid") and ref["uid"] != pod_uid:
            raise ApiError(
                409,
                "Conflict",
                f"the UID in the bound object reference ({ref['uid']}) does not match the UID "
                f"in record ({pod_uid}). The object might have been deleted and then recreated",
            )
        if (pod.get("spec") or {}).get("serviceAccountName", "default") != name:
            raise forbidden(
                f'serviceaccounts "{name}" is forbidden: cannot bind token for serviceaccount '
                f'"{name}" to pod running with different serviceaccount name.',
                "serviceaccounts",
                name,
            )
        node_name = str((pod.get("spec") or {}).get("nodeName") or "")
        node_uid = ""
        if node_name:
            try:
                node = await registry.get(BY_PLURAL["nodes"], None, node_name)
                node_uid = str(node["metadata"].get("uid", ""))
            except ApiError:
                node_uid = ""
        bound = tokens.BoundRef("Pod", pod["metadata"]["name"], pod_uid, node_name, node_uid)
    token, expires = auth.signer.issue_service_account_token(
        namespace,
        name,
        str(account["metadata"].get("uid", "")),
        audiences=audiences,
        expiration_seconds=seconds,
        bound=bound,
    )
    out_spec: Obj = {"audiences": list(audiences), "expirationSeconds": seconds}
    if bound is not None:
        out_spec["boundObjectRef"] = {
            "kind": "Pod",
            "apiVersion": "v1",
            "name": bound.name,
            "uid": bound.uid,
        }
    else:
        out_spec["boundObjectRef"] = None
    return {
        "kind": "TokenRequest",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"name": name, "namespace": namespace, "creationTimestamp": rfc3339(now)},
        "spec": out_spec,
        "status": {
            "token": token,
            "expirationTimestamp": rfc3339(dt.datetime.fromtimestamp(expires, dt.UTC)),
        },
    }
