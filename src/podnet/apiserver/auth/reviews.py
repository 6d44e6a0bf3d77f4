"""The review APIs and TokenRequest: create-only resources that answer instead of storing.

What belongs here (upstream `pkg/registry/authentication|authorization/*`):
- `authentication.k8s.io/v1` TokenReview (is this token valid, whose is it) and SelfSubjectReview
  (`kubectl auth whoami`);
- `authorization.k8s.io/v1` SubjectAccessReview, LocalSubjectAccessReview,
  SelfSubjectAccessReview (`kubectl auth can-i`) and SelfSubjectRulesReview (`can-i --list`);
- `serviceaccounts/<name>/token` (TokenRequest, `kubectl create token`) as a user: NodeRestriction,
  then `tokenrequest.issue`.
Every answer echoes the request with a `status`, as upstream does; nothing is stored.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from podnet.api.errors import ApiError, bad_request
from podnet.apiserver.auth import node as node_auth
from podnet.apiserver.auth import tokenrequest, tokens
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
    """TokenRequest for serviceaccount `namespace/name` as `user` (NodeRestriction first)."""
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    node_auth.admit_token_request(user, auth.pods, namespace, body)
    return await tokenrequest.issue(auth.registry, auth.signer, namespace, name, body, now)
