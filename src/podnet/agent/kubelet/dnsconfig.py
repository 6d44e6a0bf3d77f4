"""A pod's /etc/resolv.conf, /etc/hosts and hostname, as the kubelet composes them.

Pure (the node's resolv.conf is passed in already parsed). Upstream's `pkg/kubelet/network/dns`
(`GetPodDNS`, `formDNSConfigFitsLimits`) and `GeneratePodHostNameAndDomain` /
`managedHostsFileContent`, with containerd's rendering of the file:

- dnsPolicy ClusterFirst (the default): `nameserver <cluster DNS>`, `search
  <ns>.svc.<zone> svc.<zone> <zone>` then the node's search domains, `options ndots:5`;
  a hostNetwork pod with ClusterFirst gets Default instead, ClusterFirstWithHostNet keeps
  the cluster's;
- Default: the node's resolv.conf (nameservers, search, options) as it is;
- None: nothing but `dnsConfig`;
- `dnsConfig` (any policy) appends nameservers and searches (duplicates dropped) and merges
  options by name; then at most 3 nameservers, 32 search domains of at most 253 characters,
  2048 characters of search line;
- hostname: `spec.hostname`, else the pod name, cut to 63 characters (no trailing '-' or '.');
  with `spec.subdomain` the domain is `<subdomain>.<ns>.svc.<zone>` and the hosts line is
  `<ip>\t<hostname>.<domain>\t<hostname>`; `setHostnameAsFQDN` makes the FQDN the hostname;
- /etc/hosts: the kubelet's header and loopback lines, the pod's line per pod IP, then
  `hostAliases` under their own comment.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from podnet.dns.resolvconf import ResolvConf, merge_options, omit_duplicates

MAX_NAMESERVERS = 3
MAX_SEARCHES = 32
MAX_SEARCH_CHARS = 2048
MAX_SEARCH_LENGTH = 253
MAX_HOSTNAME = 63
CLUSTER_OPTIONS = ("ndots:5",)
HOSTS_HEADER = (
    "# Kubernetes-managed hosts file.\n"
    "127.0.0.1\tlocalhost\n"
    "::1\tlocalhost ip6-localhost ip6-loopback\n"
    "fe00::0\tip6-localnet\n"
    "fe00::0\tip6-mcastprefix\n"
    "fe00::1\tip6-allnodes\n"
    "fe00::2\tip6-allrouters\n"
)


class PodDnsError(ValueError):
    """The pod's DNS settings cannot be honoured; the message names the field."""


@dataclass(frozen=True, slots=True)
class PodDnsFiles:
    hostname: str  # what `hostname` prints in the pod
    hosts: str
    resolv_conf: str


def pod_dns_files(
    pod: Mapping[str, Any],
    pod_ips: Sequence[str],
    *,
    cluster_domain: str,
    cluster_dns: Sequence[str],
    node_resolv_conf: ResolvConf,
) -> PodDnsFiles:
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    hostname, domain = pod_hostname(pod, cluster_domain)
    shown = hostname
    if spec.get("setHostnameAsFQDN") and domain:
        shown = f"{hostname}.{domain}"
        if len(shown) > MAX_HOSTNAME + 1:
            raise PodDnsError(
                f"pod {meta.get('name')}: setHostnameAsFQDN makes the hostname {shown!r}, longer "
                f"than {MAX_HOSTNAME + 1} characters"
            )
    resolv = pod_resolv_conf(pod, cluster_domain, cluster_dns, node_resolv_conf)
    return PodDnsFiles(
        hostname=shown,
        hosts=render_hosts(pod_ips, hostname, domain, spec.get("hostAliases") or ()),
        resolv_conf=resolv.render(),
    )


def pod_hostname(pod: Mapping[str, Any], cluster_domain: str) -> tuple[str, str]:
    """(hostname, domain): `GeneratePodHostNameAndDomain`."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    name = str(meta.get("name") or "")
    hostname = str(spec.get("hostname") or name)
    if len(hostname) > MAX_HOSTNAME:
        hostname = hostname[:MAX_HOSTNAME].rstrip("-.")
        if not hostname:
            raise PodDnsError(f"pod {name}: hostname {spec.get('hostname') or name!r} is invalid")
    domain = ""
    if spec.get("subdomain"):
        domain = f"{spec['subdomain']}.{meta.get('namespace')}.svc.{cluster_domain}"
    return hostname, domain


def pod_resolv_conf(
    pod: Mapping[str, Any],
    cluster_domain: str,
    cluster_dns: Sequence[str],
    node: ResolvConf,
) -> ResolvConf:
    """`GetPodDNS`: the policy's base, `dnsConfig` appended, then the limits."""
    spec = pod.get("spec") or {}
    namespace = str((pod.get("metadata") or {}).get("namespace") or "default")
    policy = str(spec.get("dnsPolicy") or "ClusterFirst")
    if policy == "ClusterFirst" and spec.get("hostNetwork"):
        policy = "Default"
    if policy in ("ClusterFirst", "ClusterFirstWithHostNet") and not cluster_dns:
        policy = "Default"  # the kubelet falls back when it has no cluster DNS
    nameservers: list[str]
    searches: list[str]
    options: list[str]
    if policy == "None":
        nameservers, searches, options = [], [], []
    elif policy == "Default":
        nameservers, searches, options = (
            list(node.nameservers),
            list(node.searches),
            list(node.options),
        )
    elif policy in ("ClusterFirst", "ClusterFirstWithHostNet"):
        cluster_search = [f"{namespace}.svc.{cluster_domain}", f"svc.{cluster_domain}"]
        nameservers = list(cluster_dns)
        searches = omit_duplicates([*cluster_search, cluster_domain, *node.searches])
        options = list(CLUSTER_OPTIONS)
    else:
        raise PodDnsError(
            f"dnsPolicy {policy!r} is not one of ClusterFirst, ClusterFirstWithHostNet, "
            "Default, None"
        )
    extra = spec.get("dnsConfig") or {}
    nameservers = omit_duplicates([*nameservers, *(str(s) for s in extra.get("nameservers") or ())])
    searches = omit_duplicates([*searches, *(str(s) for s in extra.get("searches") or ())])
    pod_options = []
    for option in extra.get("options") or ():
        value = option.get("value")
        pod_options.append(f"{option.get('name')}:{value}" if value else str(option.get("name")))
    options = merge_options(options, pod_options)
    return ResolvConf(
        tuple(nameservers[:MAX_NAMESERVERS]), tuple(fit_searches(searches)), tuple(options)
    )


def fit_searches(searches: Sequence[str]) -> list[str]:
    """`formDNSSearchFitsLimits`: at most 32 domains, none over 253 characters, and a search
    line of at most 2048 characters (domains cut from the end)."""
    kept = [s for s in list(searches)[:MAX_SEARCHES] if len(s) <= MAX_SEARCH_LENGTH]
    while kept and len(" ".join(kept)) > MAX_SEARCH_CHARS:
        kept.pop()
    return kept


def render_hosts(
    pod_ips: Sequence[str],
    hostname: str,
    domain: str,
    host_aliases: Sequence[Mapping[str, Any]] = (),
) -> str:
    """`managedHostsFileContent`."""
    lines = [HOSTS_HEADER]
    for ip in pod_ips:
        lines.append(
            f"{ip}\t{hostname}.{domain}\t{hostname}\n" if domain else f"{ip}\t{hostname}\n"
        )
    if host_aliases:
        lines.append("\n# Entries added by HostAliases.\n")
        for alias in host_aliases:
            names = "\t".join(str(h) for h in alias.get("hostnames") or ())
            lines.append(f"{alias.get('ip')}\t{names}\n")
    return "".join(lines)
