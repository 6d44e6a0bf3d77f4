"""RBAC: rule matching, the index of roles and bindings, and the authorizer over it.

What belongs here (upstream `plugin/pkg/auth/authorizer/rbac` and
`pkg/apis/rbac/v1/evaluation_helpers.go`):
- `rule_allows(rule, attrs)`: one PolicyRule against one request (verbs, apiGroups, resources
  with `*`, `*/sub` and `res/sub`, resourceNames, nonResourceURLs with a trailing `*`);
- `RbacIndex`: every Role, ClusterRole, RoleBinding and ClusterRoleBinding, kept current by a
  list + watch of the registry, with bindings indexed by subject so a request looks at only
  the bindings naming its user or one of its groups (1k RoleBindings cost nothing);
  ClusterRoles with an `aggregationRule` resolve to the union of the rules of the ClusterRoles
  their selectors match (upstream's clusterrole-aggregation controller; `run_aggregation`
  writes that union into `rules` so `kubectl get clusterrole admin -o yaml` shows it);
- `RbacAuthorizer`: allow when any rule of any role bound to the user allows; RBAC never denies
  (other authorizers may still allow).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from podnet.api.errors import ApiError
from podnet.api.resources import BY_PLURAL
from podnet.api.selectors import LabelSelector
from podnet.apiserver.auth.attributes import Attributes
from podnet.apiserver.auth.user import UserInfo, service_account_user
from podnet.apiserver.registry import ListOptions, Registry
from podnet.retry import Backoff, Retry

log = logging.getLogger(__name__)

Obj = dict[str, Any]
KINDS = ("roles", "clusterroles", "rolebindings", "clusterrolebindings")
WATCH_RETRY = Backoff(0.2, 5.0)


def _has(values: Iterable[str], wanted: str) -> bool:
    return any(v == "*" or v == wanted for v in values)


def rule_allows(rule: Obj, attrs: Attributes) -> bool:
    if not _has(rule.get("verbs") or (), attrs.verb):
        return False
    if not attrs.resource_request:
        for url in rule.get("nonResourceURLs") or ():
            if url == "*" or url == attrs.path:
                return True
            if url.endswith("*") and attrs.path.startswith(url[:-1]):
                return True
        return False
    if not _has(rule.get("apiGroups") or (), attrs.api_group):
        return False
    combined, sub = attrs.combined_resource, attrs.subresource
    for resource in rule.get("resources") or ():
        if resource in ("*", combined):
            break
        if sub and resource == f"*/{sub}":
            break
    else:
        return False
    names = rule.get("resourceNames") or ()
    return not names or attrs.name in names


def subject_keys(user: UserInfo) -> list[str]:
    return [f"User:{user.name}", *(f"Group:{g}" for g in user.groups)]


def _subject_key(subject: Obj, binding_namespace: str) -> str | None:
    kind = subject.get("kind")
    name = str(subject.get("name") or "")
    if kind in ("User", "Group"):
        return f"{kind}:{name}"
    if kind == "ServiceAccount":
        namespace = str(subject.get("namespace") or binding_namespace)
        return f"User:{service_account_user(namespace, name).name}"
    return None


@dataclass(slots=True)
class RbacIndex:
    roles: dict[tuple[str, str], Obj] = field(default_factory=dict)
    cluster_roles: dict[str, Obj] = field(default_factory=dict)
    role_bindings: dict[tuple[str, str], Obj] = field(default_factory=dict)
    cluster_role_bindings: dict[str, Obj] = field(default_factory=dict)
    # subject key -> binding keys
    _rb_by_subject: dict[tuple[str, str], set[str]] = field(
        default_factory=lambda: defaultdict(set)
    )
    _crb_by_subject: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    _aggregated: dict[str, list[Obj]] | None = None
    synced: asyncio.Event = field(default_factory=asyncio.Event)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    _kinds_synced: set[str] = field(default_factory=set)

    # -- updates ---------------------------------------------------------------------------

    def replace(self, plural: str, objects: Iterable[Obj]) -> None:
        for key in list(self._table(plural)):
            self._remove(plural, key)
        for obj in objects:
            self.apply(plural, "ADDED", obj)
        self._kinds_synced.add(plural)
        if self._kinds_synced >= set(KINDS):
            self.synced.set()

    def apply(self, plural: str, event: str, obj: Obj) -> None:
        meta = obj.get("metadata") or {}
        key: Any = (
            (meta.get("namespace", ""), meta.get("name", ""))
            if plural in ("roles", "rolebindings")
            else meta.get("name", "")
        )
        self._remove(plural, key)
        if event != "DELETED":
            self._table(plural)[key] = obj
            if plural == "rolebindings":
                for subject in obj.get("subjects") or ():
                    skey = _subject_key(subject, key[0])
                    if skey:
                        self._rb_by_subject[(key[0], skey)].add(key[1])
            elif plural == "clusterrolebindings":
                for subject in obj.get("subjects") or ():
                    skey = _subject_key(subject, "")
                    if skey:
                        self._crb_by_subject[skey].add(key)
        if plural == "clusterroles":
            self._aggregated = None
        self.changed.set()

    def _table(self, plural: str) -> dict[Any, Obj]:
        tables: dict[str, dict[Any, Obj]] = {
            "roles": self.roles,
            "clusterroles": self.cluster_roles,
            "rolebindings": self.role_bindings,
            "clusterrolebindings": self.cluster_role_bindings,
        }
        return tables[plural]

    def _remove(self, plural: str, key: Any) -> None:
        old = self._table(plural).pop(key, None)
        if old is None:
            return
        if plural == "rolebindings":
            for subject in old.get("subjects") or ():
                skey = _subject_key(subject, key[0])
                if skey:
                    self._rb_by_subject[(key[0], skey)].discard(key[1])
        elif plural == "clusterrolebindings":
            for subject in old.get("subjects") or ():
                skey = _subject_key(subject, "")
                if skey:
                    self._crb_by_subject[skey].discard(key)

    # -- reading ---------------------------------------------------------------------------

    def aggregated_rules(self) -> dict[str, list[Obj]]:
        """ClusterRole name -> its rules with aggregation resolved. An aggregated role that is
        itself aggregated (edit into admin) contributes its resolved rules, as it does upstream
        once the controller has written them."""
        if self._aggregated is None:
            out: dict[str, list[Obj]] = {}
            for name in self.cluster_roles:
                self._resolve(name, out, set())
            self._aggregated = out
        return self._aggregated

    def _resolve(self, name: str, out: dict[str, list[Obj]], visiting: set[str]) -> list[Obj]:
        if name in out:
            return out[name]
        role = self.cluster_roles.get(name) or {}
        rule_spec = role.get("aggregationRule")
        if not isinstance(rule_spec, dict) or name in visiting:
            out[name] = list(role.get("rules") or ())
            return out[name]
        visiting.add(name)
        selectors = []
        for spec in rule_spec.get("clusterRoleSelectors") or ():
            with contextlib.suppress(ApiError):
                selectors.append(LabelSelector.from_spec(spec))
        rules: list[Obj] = []
        for other_name, other in sorted(self.cluster_roles.items()):
            labels = (other.get("metadata") or {}).get("labels") or {}
            if other_name != name and any(s.matches(labels) for s in selectors):
                for rule in self._resolve(other_name, out, visiting):
                    if rule not in rules:
                        rules.append(rule)
        visiting.discard(name)
        out[name] = rules
        return rules

    def _role_rules(self, ref: Obj, namespace: str) -> list[Obj]:
        kind, name = ref.get("kind"), str(ref.get("name") or "")
        if kind == "ClusterRole":
            return self.aggregated_rules().get(name, [])
        if kind == "Role" and namespace:
            role = self.roles.get((namespace, name))
            return list(role.get("rules") or ()) if role else []
        return []

    def rules_for(self, user: UserInfo, namespace: str) -> Iterator[Obj]:
        """Every rule that applies to `user` in `namespace` ('' : cluster-wide only)."""
        keys = subject_keys(user)
        seen: set[str] = set()
        for key in keys:
            for name in sorted(self._crb_by_subject.get(key, ())):
                if name in seen:
                    continue
                seen.add(name)
                binding = self.cluster_role_bindings[name]
                yield from self._role_rules(binding.get("roleRef") or {}, "")
        if not namespace:
            return
        seen.clear()
        for key in keys:
            for name in sorted(self._rb_by_subject.get((namespace, key), ())):
                if name in seen:
                    continue
                seen.add(name)
                binding = self.role_bindings[(namespace, name)]
                yield from self._role_rules(binding.get("roleRef") or {}, namespace)

    # -- feeding -----------------------------------------------------------------------------

    async def run(self, registry: Registry, stop: asyncio.Event) -> None:
        """Keep the index current until `stop`: one list + watch per kind, re-listed on error."""
        await asyncio.gather(*(self._follow(registry, plural, stop) for plural in KINDS))

    async def _follow(self, registry: Registry, plural: str, stop: asyncio.Event) -> None:
        res = BY_PLURAL[plural]
        retry = Retry(WATCH_RETRY)
        while not stop.is_set():
            try:
                listed = await registry.list(res, None, ListOptions())
                self.replace(plural, listed["items"])
                version = listed["metadata"]["resourceVersion"]
                events = registry.watch(res, None, version, ListOptions(), stop=stop)
                async with contextlib.aclosing(events):
                    async for event in events:
                        if event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                            self.apply(plural, event["type"], event["object"])
                            retry.reset()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                delay = retry.next()
                log.warning(
                    "rbac: watching %s failed (%s); re-listing in %.1fs", plural, exc, delay
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)


class RbacAuthorizer:
    name = "RBAC"

    def __init__(self, index: RbacIndex) -> None:
        self.index = index

    def authorize(self, attrs: Attributes) -> tuple[bool | None, str]:
        """(True, reason) to allow; (None, "") for no opinion (RBAC never denies)."""
        for rule in self.index.rules_for(attrs.user, attrs.namespace):
            if rule_allows(rule, attrs):
                return True, "allowed by RBAC"
        return None, ""


async def run_aggregation(registry: Registry, index: RbacIndex, stop: asyncio.Event) -> None:
    """Write each aggregated ClusterRole's resolved rules into its `rules` field."""
    res = BY_PLURAL["clusterroles"]
    await index.synced.wait()
    while not stop.is_set():
        index.changed.clear()
        for name, rules in index.aggregated_rules().items():
            role = index.cluster_roles.get(name)
            if role is None or "aggregationRule" not in role or (role.get("rules") or []) == rules:
                continue
            try:
                await registry.patch(res, None, name, "merge", {"rules": rules})
            except ApiError as exc:
                log.warning("rbac: aggregating ClusterRole %s failed: %s", name, exc)
        waiter = asyncio.ensure_future(index.changed.wait())
        stopper = asyncio.ensure_future(stop.wait())
        await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        stopper.cancel()
