"""The lab's cluster DNS add-on, pure parts: manifests, the nodes' resolv.conf, rollout."""

from __future__ import annotations

from podnet.api.defaults import apply_defaults
from podnet.api.resources import resource
from podnet.api.validation import validate
from podnet.dns.resolvconf import ResolvConf
from podnet.lab.dns import (
    describe_state,
    is_local_address,
    lab_resolv_conf,
    render_deployment,
    render_rbac,
    render_service,
    rolled_out,
    upstream_warning,
)

HOST = ResolvConf(("127.0.0.53", "192.0.2.53", "::1"), ("corp.example",), ("edns0",))


def test_the_nodes_resolv_conf() -> None:
    assert lab_resolv_conf(HOST, None) == ResolvConf(
        ("192.0.2.53",), ("corp.example",), ("edns0",)
    )  # a pod cannot reach the machine's loopback
    assert lab_resolv_conf(HOST, ("172.31.4.11",)).nameservers == ("172.31.4.11",)
    assert lab_resolv_conf(HOST, ()).render() == "search corp.example\noptions edns0\n"


def test_up_says_when_no_upstream_can_be_reached() -> None:
    """This machine's case (2026-12-07): nameserver 10.255.255.53, ip_forward 0: every name
    outside the cluster answered SERVFAIL after 2 s and busybox's nslookup printed 'connection
    timed out; no servers could be reached', with nothing said at `up`."""
    local = {"172.31.1.1", "192.0.2.2"}.__contains__
    assert upstream_warning("lab", ("10.255.255.53",), local, forwarding=False) == (
        "names outside the cluster will answer SERVFAIL: the lab's upstream 10.255.255.53 is "
        "not an address of this machine, which does not forward (net.ipv4.ip_forward=0), so "
        "the DNS pods cannot reach it; `podnet dns-upstream --name lab IP` points them at one "
        "they reach"
    )
    assert upstream_warning("lab", ("10.255.255.53",), local, forwarding=True) is None
    assert upstream_warning("lab", ("10.255.255.53", "192.0.2.2"), local, False) is None
    assert upstream_warning("lab", (), local, forwarding=True) == (
        "names outside the cluster have no upstream nameserver; "
        "`podnet dns-upstream --name lab IP` gives the lab one"
    )


def test_local_addresses_are_the_ones_a_socket_binds() -> None:
    assert is_local_address("127.0.0.1")
    assert not is_local_address("198.51.100.253")  # TEST-NET-2: no machine of ours has it
    assert not is_local_address("not-an-address")


def test_the_service_is_kube_dns_at_the_tenth_address() -> None:
    service = render_service("10.96.0.10")
    assert service["metadata"]["name"] == "kube-dns"
    assert service["metadata"]["namespace"] == "kube-system"
    assert service["spec"]["clusterIP"] == "10.96.0.10"
    assert service["spec"]["selector"] == {"k8s-app": "kube-dns"}
    assert [(p["port"], p["protocol"]) for p in service["spec"]["ports"]] == [
        (53, "UDP"), (53, "TCP"), (9153, "TCP"),
    ]  # fmt: skip


def test_the_deployment_runs_as_its_service_account_held_to_read_only_rbac() -> None:
    deployment = render_deployment("cluster.local")
    spec = deployment["spec"]
    assert deployment["metadata"]["name"] == "coredns" and spec["replicas"] == 2
    pod = spec["template"]["spec"]
    assert spec["template"]["metadata"]["labels"] == {"k8s-app": "kube-dns"}
    assert pod["dnsPolicy"] == "Default"  # the nodes' resolv.conf: the upstreams
    # the kubelet mounts the ServiceAccount's projected token: no volume of the lab's own
    assert pod["serviceAccountName"] == "coredns" and "volumes" not in pod
    (container,) = pod["containers"]
    assert container["image"].startswith("registry.k8s.io/coredns/coredns:")
    assert container["livenessProbe"]["httpGet"]["port"] == 8080
    assert container["readinessProbe"]["httpGet"]["port"] == 8181
    objects = dict(render_rbac())
    account = objects["serviceaccounts"]["metadata"]
    assert (account["namespace"], account["name"]) == ("kube-system", "coredns")
    rules = objects["clusterroles"]["rules"]
    assert {verb for rule in rules for verb in rule["verbs"]} == {"list", "watch"}
    binding = objects["clusterrolebindings"]
    assert binding["roleRef"]["name"] == objects["clusterroles"]["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "coredns", "namespace": "kube-system"}
    ]


def test_rollout_is_done_when_every_replica_is_new_and_available() -> None:
    deployment = {
        "spec": {"replicas": 2},
        "status": {"observedGeneration": 3, "replicas": 3, "updatedReplicas": 2,
                   "availableReplicas": 2},
    }  # fmt: skip
    assert not rolled_out(deployment, 3)  # an old pod still counts
    deployment["status"]["replicas"] = 2
    assert rolled_out(deployment, 3)
    assert not rolled_out(deployment, 4)


def test_the_manifests_pass_api_validation() -> None:
    for plural, obj in (
        ("services", render_service("10.96.0.10")),
        ("deployments", render_deployment()),
        *render_rbac(),
    ):
        res = resource(plural)
        assert validate(res, apply_defaults(res, obj), None) == []


def test_a_dns_timeout_says_where_the_chain_to_an_answer_stopped() -> None:
    """Lab.up's "cluster DNS did not answer ... within 120 s" carried only the probe's last
    error (EPERM: the node's proxy rejects a Service with no endpoints), not whether the
    coredns pods were scheduled, started, in back-off or Ready, nor whether kube-dns had an
    endpoint: a CI failure could not be told apart from a slow proxy."""
    running = {
        "metadata": {"name": "coredns-b"},
        "spec": {"nodeName": "node2"},
        "status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "False"}],
            "containerStatuses": [
                {"name": "coredns", "restartCount": 3,
                 "state": {"waiting": {"reason": "CrashLoopBackOff"}}},
            ],
        },
    }  # fmt: skip
    pending = {"metadata": {"name": "coredns-a"}, "status": {"phase": "Pending"}}
    assert describe_state([running, pending], []) == (
        "coredns pods: coredns-a on no node, Pending, not Ready; coredns-b on node2, Running, "
        "not Ready, coredns waiting: CrashLoopBackOff, 3 restarts; kube-dns ready endpoints: none"
    )
    ready = {
        "metadata": {"name": "coredns-c", "deletionTimestamp": "2026-12-07T21:00:00Z"},
        "spec": {"nodeName": "node1"},
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
    }
    slices = [
        {"endpoints": [
            {"addresses": ["10.244.0.2"], "conditions": {"ready": True}},
            {"addresses": ["10.244.1.2"], "conditions": {"ready": False}},
            {"addresses": ["10.244.0.3"]},  # unset counts as ready
        ]},
    ]  # fmt: skip
    assert describe_state([ready], slices) == (
        "coredns pods: coredns-c on node1, Running, Ready, terminating; "
        "kube-dns ready endpoints: 10.244.0.2, 10.244.0.3"
    )
    assert describe_state([], []) == "coredns pods: none; kube-dns ready endpoints: none"
