"""`podnet graph`: the picture of a captured lab holds every pod and Service (SVG, DOT, JSON),
and a real headless Chromium renders the HTML page with all of them; a trace's path is
highlighted in order."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from podnet.testing import browser
from podnet.trace.graph import build_graph, graph_to_dict, render_dot, render_html, render_svg
from podnet.trace.plan import plan_trace
from podnet.trace.resolve import resolve_probe
from podnet.trace.snapshot import Snapshot, _trim

Snapshots = Callable[[str], Snapshot]


def names(snap: Snapshot, resource: str) -> set[str]:
    return {f"{o['metadata']['namespace']}/{o['metadata']['name']}" for o in snap.objects(resource)}


def test_every_pod_and_service_is_drawn(snapshots: Snapshots) -> None:
    snap = snapshots("vxlan-iptables")
    graph = build_graph(snap)
    svg, dot = render_svg(graph), render_dot(graph)
    doc = graph_to_dict(graph)
    for pod in names(snap, "pods"):
        assert f'data-name="{pod}"' in svg and f'"pod {pod}"' in dot
    for svc in names(snap, "services"):
        assert f'data-name="{svc}"' in svg and f'"svc {svc}"' in dot
    drawn = {f"{p['namespace']}/{p['name']}" for n in doc["nodes"] for p in n["pods"]}
    assert drawn == names(snap, "pods")
    hostnames = next(s for s in doc["services"] if s["name"] == "hostnames")
    assert len(hostnames["endpoints"]) == 3
    node1 = next(n for n in doc["nodes"] if n["name"] == "node1")
    assert node1["bridge"] == "cni0 10.244.1.1/24" and "vxlan VNI 1" in node1["overlay"]


def test_a_trace_path_is_numbered_in_order(snapshots: Snapshots) -> None:
    snap = snapshots("vxlan-iptables")
    trace = plan_trace(snap, resolve_probe(snap, "alpha", "svc/hostnames"), "10.244.0.5")
    graph = build_graph(snap, trace)
    assert graph.path == (
        "pod default/alpha",
        "node node1",
        "node node2",
        "pod default/hostnames-579567ddc6-vgf5t",
    )
    svg = render_svg(graph)
    assert svg.count("<circle") == 4 and '<g class="path">' in svg


@pytest.mark.skipif(browser.chromium() is None, reason="chromium is not installed")
def test_chromium_renders_the_page_with_every_pod_and_service(
    snapshots: Snapshots, tmp_path: Path
) -> None:
    snap = snapshots("vxlan-iptables")
    graph = build_graph(snap)
    page = tmp_path / "graph.html"
    page.write_text(render_html(render_svg(graph), graph))
    dom = browser.dump_dom(page.as_uri())
    assert "<svg" in dom and "podnet lab trx1" in dom
    for name in names(snap, "pods") | names(snap, "services"):
        assert f'data-name="{name}"' in dom, name
    shot = tmp_path / "graph.png"
    browser.screenshot(page.as_uri(), shot)
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert (width, height) == (1200, 1000) and len(png) > 20_000  # a picture, not a blank page
    json.dumps(graph_to_dict(graph))


def test_a_terminating_pod_is_drawn_as_such(snapshots: Snapshots) -> None:
    """A pod in its grace period (scaled down, deleted) is still Running and still has its
    network; it used to be drawn as any running pod, while the Service arrows had already
    left it. It is marked terminating in every rendering."""
    snap = snapshots("vxlan-iptables")
    pods = []
    for pod in snap.objects("pods"):
        if pod["metadata"]["name"] == "gamma":
            meta = {**pod["metadata"], "deletionTimestamp": "2026-12-07T18:40:00Z"}
            pod = {**pod, "metadata": meta}
        pods.append(pod)
    graph = build_graph(replace(snap, api={**snap.api, "pods": pods}))
    doc = graph_to_dict(graph)
    states = {p["name"]: p["terminating"] for n in doc["nodes"] for p in n["pods"]}
    assert states["gamma"] and not states["alpha"]
    svg = render_svg(graph)
    assert "(podnet-" in svg and svg.count("terminating") == 2  # title and the box's line
    assert "\\nterminating" in render_dot(graph)


def test_a_snapshot_keeps_the_deletion_timestamp() -> None:
    meta = {"name": "p", "namespace": "default", "deletionTimestamp": "2026-12-07T18:40:00Z"}
    assert _trim("pods", {"metadata": meta})["metadata"] == meta


def test_what_stands_behind_a_service_that_is_no_pod_is_drawn(snapshots: Snapshots) -> None:
    """`kubernetes` (its endpoint is the API server on the host) showed a ClusterIP and no
    target at all, an ExternalName Service only "-": a learner saw two Services leading
    nowhere. The graph now says where each one leads, in every rendering."""
    snap = snapshots("vxlan-iptables")
    ext = {
        "metadata": {"namespace": "default", "name": "ext"},
        "spec": {"type": "ExternalName", "externalName": "example.com"},
    }
    graph = build_graph(
        replace(snap, api={**snap.api, "services": [*snap.objects("services"), ext]})
    )
    by_name = {s.name: s for s in graph.services}
    api = by_name["kubernetes"]
    assert (api.endpoints, api.others) == ((), (("172.31.1.1:60953", "host"),))
    assert api.note == "→ API server 172.31.1.1:60953"
    assert by_name["ext"].external_name == "example.com"
    assert by_name["hostnames"].others == () and by_name["hostnames"].note == ""

    svg, dot = render_svg(graph), render_dot(graph)
    assert "ExternalName → example.com" in svg and "DNS CNAME only, no proxy rules" in svg
    assert "→ API server 172.31.1.1:60953" in svg
    assert (
        '"svc default/kubernetes" -> underlay [label="172.31.1.1:60953 (API server on the host)"]'
        in dot
    )
    assert '"svc default/ext" -> "dns example.com" [label="DNS CNAME", style=dashed];' in dot
    services = {s["name"]: s for s in graph_to_dict(graph)["services"]}
    assert services["kubernetes"]["otherEndpoints"] == [
        {"address": "172.31.1.1:60953", "where": "host"}
    ]
    assert services["ext"]["externalName"] == "example.com"


def test_a_node_the_lab_did_not_make_is_not_drawn_with_the_hosts_devices(
    snapshots: Snapshots,
) -> None:
    """A machine `podnet join`ed to the lab has a Node but no namespace the lab knows; the
    graph looked it up as the namespace "" — the host's — and drew the underlay bridge
    172.31.1.1/24 as its cni0, and no address."""
    snap = snapshots("vxlan-iptables")
    joined = {
        "metadata": {"name": "m1"},
        "spec": {"podCIDR": "10.244.3.0/24"},
        "status": {"addresses": [{"type": "InternalIP", "address": "172.31.1.50"}]},
    }
    graph = build_graph(replace(snap, api={**snap.api, "nodes": [*snap.objects("nodes"), joined]}))
    m1 = next(n for n in graph.nodes if n.name == "m1")
    assert (m1.ip, m1.bridge) == ("172.31.1.50", "cni0")
    assert m1.overlay == "not a node of this lab (joined): its kernel is not read"
