"""TokenRequest (`serviceaccounts/<name>/token`, `kubectl create token`): a bound token for an
existing ServiceAccount, optionally bound to a pod of that ServiceAccount (upstream
`pkg/registry/core/serviceaccount/storage/token.go`).

What belongs here: `issue`, the checks and the answer, shared by the HTTP handler (after the
requester is authorized and NodeRestriction admitted the request, `reviews.token_request`) and
by `LocalApi` (the server's own callers, and the in-memory API tests run kubelets against).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from podnet.api.errors import ApiError, bad_request, forbidden, not_found
from podnet.api.meta import rfc3339
from podnet.api.resources import BY_PLURAL
from podnet.apiserver.auth import tokens
from podnet.apiserver.registry import Registry

Obj = dict[str, Any]


async def issue(
    registry: Registry,
    signer: tokens.TokenSigner,
    namespace: str,
    name: str,
    body: Any,
    now: dt.datetime,
) -> Obj:
    """TokenRequest for serviceaccount `namespace/name` (the 201 answer, with `status.token`)."""
    if not isinstance(body, dict) or not isinstance(body.get("spec") or {}, dict):
        raise bad_request("the request body must be a TokenRequest object with a spec")
    spec: Obj = body.get("spec") or {}
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
    token, expires = signer.issue_service_account_token(
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
