"""`podnet graph`: the live topology of a lab, drawn.

What belongs here: `build_graph(snapshot)` — the cluster as data: the underlay bridge, each
node (address, pod subnet, bridge, overlay device) with its pods (address, veth), the
Services with their ClusterIPs and arrows to the pods behind them (and what stands behind a
Service that is no pod: the API server on the host behind `kubernetes`, a node, an address
outside the lab; the DNS name an ExternalName Service is an alias of) — and its renderings:
`render_svg` (optionally highlighting a trace's path, numbered hop by hop), `render_dot`
(Graphviz text, for whoever wants another layout), `graph_to_dict` (JSON) and `render_html`
(a page around the SVG; with a refresh URL it re-fetches the picture every few seconds).

Why our own SVG and not Graphviz: the picture has a fixed shape — nodes side by side, each a
column of pods above its bridge and overlay device, Services on top, the underlay below — so
a grid layout is a few lines, stays the same from one refresh to the next (nothing jumps
around when a pod comes or goes), needs no program outside Python, and keeps the kernel's
names (cni0, flannel.1, veth…) exactly where a reader of the explainer expects them.
`-o dot` still gives Graphviz the same graph.

Invariants: pure (a snapshot in, text out); every pod and every Service of the snapshot is in
every rendering; text is XML-escaped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from html import escape
from typing import Any

from podnet.trace.plan import Trace
from podnet.trace.snapshot import Obj, Snapshot

NODE_WIDTH = 300
GAP = 24
MARGIN = 20
POD_HEIGHT = 46
SERVICE_WIDTH = 210
SERVICE_HEIGHT = 58
PALETTE = ("#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
PATH_COLOR = "#ff7f0e"


@dataclass(frozen=True, slots=True)
class PodBox:
    namespace: str
    name: str
    ip: str
    netns: str
    veth: str  # the node's end of the pod's eth0
    ready: bool
    terminating: bool = False  # deleted, in its grace period: out of every Service's endpoints

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class NodeBox:
    name: str
    ip: str
    netns: str
    pod_cidr: str
    bridge: str  # "cni0 10.244.1.1/24"
    overlay: str  # "flannel.1 vxlan VNI 1", "flannel0 udp (TUN)", "host-gw: routes via eth0"
    pods: tuple[PodBox, ...]


@dataclass(frozen=True, slots=True)
class ServiceBox:
    namespace: str
    name: str
    type: str
    cluster_ip: str
    ports: str  # "80/tcp→8080, 30345 NodePort"
    endpoints: tuple[str, ...]  # "ns/pod" of the pods behind it (ready)
    # ready endpoints that are no pod: (address:port, where: "host", "node node1", "outside")
    others: tuple[tuple[str, str], ...] = ()
    external_name: str = ""  # type ExternalName: the DNS name it is an alias of

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def note(self) -> str:
        """One line on what is behind the Service when it is not pods (or nothing)."""
        if self.external_name:
            return "DNS CNAME only, no proxy rules"
        if self.others:
            address, where = self.others[0]
            more = f" +{len(self.others) - 1}" if len(self.others) > 1 else ""
            if self.key == "default/kubernetes" and where == "host":
                return f"→ API server {address}{more}"
            return f"→ {address} {where}{more}"
        return ""


@dataclass(frozen=True, slots=True)
class Graph:
    lab: str
    backend: str
    proxy_mode: str
    underlay: str  # "pnb… 172.31.1.0/24, host 172.31.1.1"
    nodes: tuple[NodeBox, ...]
    services: tuple[ServiceBox, ...]
    path: tuple[str, ...] = field(default=())  # places a trace went through, in order


def _meta(obj: Obj) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


def _node_box(snap: Snapshot, node: Obj, pods: list[Obj]) -> NodeBox:
    _, name = _meta(node)
    layout = snap.node(name)
    netns = layout.netns if layout else ""
    # a Node the lab did not make (`podnet join`ed from elsewhere) has no namespace here: ""
    # would be the host's, whose bridge is the underlay, not the node's cni0
    state = snap.namespaces.get(netns) if layout else None
    inv = state.inventory if state else None
    bridge = overlay = ""
    if inv is not None:
        for link in inv.links:
            addresses = ", ".join(
                f"{a.address}/{a.prefixlen}" for a in inv.addresses_of(link.index)
            )
            if link.kind == "bridge":
                bridge = f"{link.name} {addresses}".strip()
            elif link.kind == "vxlan":
                overlay = f"{link.name}: vxlan VNI {link.vni}, port {link.vxlan_port}"
            elif link.kind == "tun":
                overlay = f"{link.name}: udp datapath (TUN), port 8285"
    if layout is None:
        overlay = "not a node of this lab (joined): its kernel is not read"
    elif not overlay:
        overlay = "host-gw: routes via eth0" if snap.backend == "host-gw" else snap.backend
    boxes = []
    for pod in pods:
        ns, pod_name = _meta(pod)
        pod_netns = snap.pod_netns(pod) or ""
        veth = ""
        pod_state = snap.namespaces.get(pod_netns)
        eth0 = pod_state.inventory.link_named("eth0") if pod_state else None
        if eth0 is not None and inv is not None:
            peer = inv.link(eth0.peer_index)
            veth = peer.name if peer else ""
        status = pod.get("status") or {}
        boxes.append(
            PodBox(
                ns,
                pod_name,
                str(status.get("podIP") or "-"),
                pod_netns,
                veth,
                status.get("phase") == "Running",
                bool((pod.get("metadata") or {}).get("deletionTimestamp")),
            )
        )
    return NodeBox(
        name=name,
        ip=layout.ip if layout else _internal_ip(node),
        netns=netns,
        pod_cidr=str((node.get("spec") or {}).get("podCIDR") or "-"),
        bridge=bridge or "cni0",
        overlay=overlay,
        pods=tuple(sorted(boxes, key=lambda p: p.key)),
    )


def _internal_ip(node: Obj) -> str:
    for address in (node.get("status") or {}).get("addresses") or []:
        if address.get("type") == "InternalIP":
            return str(address.get("address") or "")
    return ""


def _ports(spec: Obj) -> str:
    parts = []
    for p in spec.get("ports") or []:
        proto = str(p.get("protocol") or "TCP").lower()
        text = f"{p.get('port')}/{proto}"
        if p.get("targetPort") not in (None, p.get("port")):
            text += f"→{p.get('targetPort')}"
        if p.get("nodePort"):
            text += f" NodePort {p['nodePort']}"
        parts.append(text)
    return ", ".join(parts)


def build_graph(snap: Snapshot, trace: Trace | None = None) -> Graph:
    pods_by_ip: dict[str, str] = {}
    pods_by_node: dict[str, list[Obj]] = {}
    for pod in snap.objects("pods"):
        spec = pod.get("spec") or {}
        ip = (pod.get("status") or {}).get("podIP")
        ns, name = _meta(pod)
        if ip and not spec.get("hostNetwork"):
            pods_by_ip[str(ip)] = f"{ns}/{name}"
        pods_by_node.setdefault(str(spec.get("nodeName") or ""), []).append(pod)
    nodes = tuple(
        _node_box(snap, node, pods_by_node.get(_meta(node)[1], []))
        for node in sorted(snap.objects("nodes"), key=lambda n: _meta(n)[1])
    )
    places = {node.ip: f"node {node.name}" for node in snap.nodes}
    host = snap.namespaces.get("")
    for address in host.inventory.addresses if host is not None else ():
        places.setdefault(str(address.address), "host")
    places.setdefault(snap.host_ip, "host")
    services = []
    for svc in sorted(snap.objects("services"), key=_meta):
        ns, name = _meta(svc)
        spec = svc.get("spec") or {}
        ready = snap.ready_endpoints(ns, name)
        endpoints = {pods_by_ip[ip] for ip, _, _ in ready if ip in pods_by_ip}
        others = {
            (f"{ip}:{port}", places.get(ip, "outside the lab"))
            for ip, _, port in ready
            if ip not in pods_by_ip
        }
        kind = str(spec.get("type") or "ClusterIP")
        services.append(
            ServiceBox(
                ns,
                name,
                kind,
                str(spec.get("clusterIP") or "-"),
                _ports(spec),
                tuple(sorted(endpoints)),
                tuple(sorted(others)),
                str(spec.get("externalName") or "") if kind == "ExternalName" else "",
            )
        )
    path = trace.path if trace is not None else ()
    bridge = snap.bridge
    subnet = ""
    if host is not None:
        link = host.inventory.link_named(bridge)
        if link is not None:
            subnet = ", ".join(
                f"{a.address}/{a.prefixlen}" for a in host.inventory.addresses_of(link.index)
            )
    return Graph(
        snap.lab,
        snap.backend,
        snap.proxy_mode,
        f"underlay bridge {bridge} {subnet}".strip(),
        nodes,
        tuple(services),
        path,
    )


def _pod_dict(p: PodBox) -> dict[str, Any]:
    return {
        "namespace": p.namespace,
        "name": p.name,
        "ip": p.ip,
        "veth": p.veth,
        "netns": p.netns,
        "running": p.ready,
        "terminating": p.terminating,
    }


def graph_to_dict(graph: Graph) -> dict[str, Any]:
    return {
        "schema": "podnet.graph/v1",
        "lab": {"name": graph.lab, "backend": graph.backend, "proxyMode": graph.proxy_mode},
        "underlay": graph.underlay,
        "nodes": [
            {
                "name": n.name,
                "ip": n.ip,
                "netns": n.netns,
                "podCIDR": n.pod_cidr,
                "bridge": n.bridge,
                "overlay": n.overlay,
                "pods": [_pod_dict(p) for p in n.pods],
            }
            for n in graph.nodes
        ],
        "services": [
            {
                "namespace": s.namespace,
                "name": s.name,
                "type": s.type,
                "clusterIP": s.cluster_ip,
                "ports": s.ports,
                "endpoints": list(s.endpoints),
                "otherEndpoints": [{"address": a, "where": w} for a, w in s.others],
                "externalName": s.external_name or None,
            }
            for s in graph.services
        ],
        "path": list(graph.path),
    }


# ---- SVG --------------------------------------------------------------------------------


def _text(
    x: float,
    y: float,
    text: str,
    size: int = 12,
    weight: str = "normal",
    fill: str = "#222",
    anchor: str = "start",
    cls: str = "",
) -> str:
    klass = f' class="{cls}"' if cls else ""
    return (
        f'<text x="{x:.0f}" y="{y:.0f}" font-size="{size}" font-weight="{weight}" '
        f'fill="{fill}" text-anchor="{anchor}"{klass}>{escape(text)}</text>'
    )


def _fit(text: str, width: float, size: int) -> str:
    """Shortened with an ellipsis to about `width` pixels (the full name is in the title)."""
    most = max(4, int(width / (size * 0.62)))
    return text if len(text) <= most else text[: most - 1] + "…"


def _rect(
    x: float,
    y: float,
    w: float,
    h: float,
    fill: str,
    stroke: str = "#555",
    width: float = 1,
    rx: int = 6,
    extra: str = "",
) -> str:
    return (
        f'<rect x="{x:.0f}" y="{y:.0f}" width="{w:.0f}" height="{h:.0f}" rx="{rx}" '
        f'fill="{fill}" stroke="{stroke}" stroke-width="{width}"{extra}/>'
    )


def _layout(graph: Graph) -> tuple[int, int, int, dict[str, tuple[float, float, float, float]]]:
    """Canvas width and height, the services' rows, and every box's (x, y, w, h)."""
    columns = max(len(graph.nodes), 1)
    width = MARGIN * 2 + columns * NODE_WIDTH + (columns - 1) * GAP
    per_row = max(1, (width - 2 * MARGIN + GAP) // (SERVICE_WIDTH + GAP))
    rows = (len(graph.services) + per_row - 1) // per_row
    boxes: dict[str, tuple[float, float, float, float]] = {}
    top = 60
    for i, svc in enumerate(graph.services):
        row, col = divmod(i, per_row)
        boxes[f"svc:{svc.key}"] = (
            MARGIN + col * (SERVICE_WIDTH + GAP),
            top + row * (SERVICE_HEIGHT + 14),
            SERVICE_WIDTH,
            SERVICE_HEIGHT,
        )
    nodes_top = top + rows * (SERVICE_HEIGHT + 14) + 50
    tallest = max((len(n.pods) for n in graph.nodes), default=0)
    node_height = 70 + tallest * (POD_HEIGHT + 8) + 110
    for i, node in enumerate(graph.nodes):
        x = MARGIN + i * (NODE_WIDTH + GAP)
        boxes[f"node:{node.name}"] = (x, nodes_top, NODE_WIDTH, node_height)
        for j, pod in enumerate(node.pods):
            boxes[f"pod:{pod.key}"] = (
                x + 14,
                nodes_top + 58 + j * (POD_HEIGHT + 8),
                NODE_WIDTH - 28,
                POD_HEIGHT,
            )
    height = nodes_top + node_height + 90
    return width, height, rows, boxes


def render_svg(graph: Graph) -> str:
    width, height, _, boxes = _layout(graph)
    on_path = set(graph.path)
    colors = {svc.key: PALETTE[i % len(PALETTE)] for i, svc in enumerate(graph.services)}
    pods = sum(len(n.pods) for n in graph.nodes)
    summary = (
        f"flannel {graph.backend} · kube-proxy {graph.proxy_mode} · {pods} pods · "
        f"{len(graph.services)} services"
    )
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
        'markerHeight="7" orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" '
        'fill="context-stroke"/></marker></defs>',
        _rect(0, 0, width, height, "#fbfbf8", "none", 0, 0),
        _text(MARGIN, 30, f"podnet lab {graph.lab}", 18, "bold"),
        _text(MARGIN, 48, summary, 12, fill="#555"),
    ]
    # services on top; their arrows to the pods behind them are drawn after the nodes
    for svc in graph.services:
        x, y, w, h = boxes[f"svc:{svc.key}"]
        color = colors[svc.key]
        out.append(f'<g class="service" data-name="{escape(svc.key)}">')
        title = f"service {svc.key} {svc.cluster_ip}"
        if svc.external_name:
            title = (
                f"service {svc.key}: ExternalName {svc.external_name}; the cluster DNS "
                "answers its name with a CNAME, kube-proxy writes no rule for it"
            )
        elif svc.others:
            title += " → " + ", ".join(f"{a} ({where})" for a, where in svc.others)
        out.append(f"<title>{escape(title)}</title>")
        out.append(_rect(x, y, w, h, "#eef4fb", color, 1.5))
        out.append(_text(x + 8, y + 17, _fit(f"svc {svc.key}", w - 16, 12), 12, "bold", cls="name"))
        second = f"{svc.cluster_ip}  {svc.ports}"
        if svc.external_name:
            second = f"ExternalName → {svc.external_name}"
        out.append(_text(x + 8, y + 34, _fit(second, w - 16, 11), 11, fill="#444"))
        if svc.note:
            out.append(_text(x + 8, y + 50, _fit(svc.note, w - 16, 10), 10, fill="#666"))
        out.append("</g>")
    # nodes, their pods, bridge and overlay device
    for node in graph.nodes:
        x, y, w, h = boxes[f"node:{node.name}"]
        highlighted = f"node {node.name}" in on_path
        out.append(f'<g class="node" data-name="{escape(node.name)}">')
        out.append(f"<title>node {escape(node.name)} ({escape(node.netns)})</title>")
        out.append(
            _rect(
                x,
                y,
                w,
                h,
                "#f3f3ee",
                PATH_COLOR if highlighted else "#666",
                3 if highlighted else 1.2,
            )
        )
        out.append(_text(x + 12, y + 22, f"node {node.name}", 14, "bold", cls="name"))
        out.append(_text(x + 12, y + 40, f"{node.ip} · pods {node.pod_cidr}", 11, fill="#444"))
        for pod in node.pods:
            px, py, pw, ph = boxes[f"pod:{pod.key}"]
            lit = f"pod {pod.key}" in on_path
            fill = "#f3ead2" if pod.terminating else "#ffffff" if pod.ready else "#f6e0e0"
            state = ", terminating" if pod.terminating else ""
            out.append(f'<g class="pod" data-name="{escape(pod.key)}">')
            out.append(f"<title>pod {escape(pod.key)} ({escape(pod.netns)}{state})</title>")
            out.append(_rect(px, py, pw, ph, fill, PATH_COLOR if lit else "#888", 3 if lit else 1))
            out.append(_text(px + 8, py + 17, _fit(pod.key, pw - 16, 12), 12, "bold", cls="name"))
            # a terminating pod's line says so instead of naming its veth (the box is ~37
            # characters wide; the veth stays in the DOT and JSON renderings)
            where = f"eth0 {pod.ip}  ⇄ {pod.veth}"
            if pod.terminating:
                where = f"eth0 {pod.ip}  · terminating"
            out.append(_text(px + 8, py + 34, where, 11, fill="#444"))
            out.append("</g>")
        bridge_y = y + h - 100
        out.append(_rect(x + 14, bridge_y, w - 28, 26, "#e6f0e6", "#4a7f4a", 1.2, 3))
        out.append(_text(x + 22, bridge_y + 17, f"bridge {node.bridge}", 11, "bold"))
        for pod in node.pods:
            px, py, pw, ph = boxes[f"pod:{pod.key}"]
            out.append(
                f'<line x1="{px + pw - 20:.0f}" y1="{py + ph:.0f}" x2="{px + pw - 20:.0f}" '
                f'y2="{bridge_y:.0f}" stroke="#4a7f4a" stroke-width="1" stroke-dasharray="3 2"/>'
            )
        out.append(_rect(x + 14, bridge_y + 36, w - 28, 26, "#f6eee0", "#8a6d3b", 1.2, 3))
        out.append(_text(x + 22, bridge_y + 53, node.overlay, 11))
        out.append(_text(x + 14, bridge_y + 82, f"eth0 {node.ip}", 11, "bold"))
        out.append(
            f'<line x1="{x + w / 2:.0f}" y1="{y + h:.0f}" x2="{x + w / 2:.0f}" '
            f'y2="{y + h + 40:.0f}" stroke="#666" stroke-width="2"/>'
        )
        out.append("</g>")
    if graph.nodes:
        first = boxes[f"node:{graph.nodes[0].name}"]
        last = boxes[f"node:{graph.nodes[-1].name}"]
        uy = first[1] + first[3] + 40
        out.append(_rect(MARGIN, uy, last[0] + last[2] - MARGIN, 28, "#e8e8f4", "#555", 1.2, 3))
        out.append(_text(MARGIN + 10, uy + 18, graph.underlay, 12, "bold"))
    for svc in graph.services:
        x, y, w, h = boxes[f"svc:{svc.key}"]
        for target in svc.endpoints:
            box = boxes.get(f"pod:{target}")
            if box is None:
                continue
            px, py, pw, _ = box
            out.append(
                f'<line x1="{x + w / 2:.0f}" y1="{y + h:.0f}" x2="{px + pw / 3:.0f}" '
                f'y2="{py:.0f}" stroke="{colors[svc.key]}" stroke-opacity="0.6" '
                'stroke-width="1.2" marker-end="url(#arrow)"/>'
            )
    out += _path(graph, boxes)
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _center(
    boxes: dict[str, tuple[float, float, float, float]], place: str
) -> tuple[float, float] | None:
    kind, _, name = place.partition(" ")
    box = boxes.get(f"{kind}:{name}")
    if box is None:
        return None
    x, y, w, h = box
    # right of the names, on the pod's row / the node's overlay device
    return x + w * 0.86, y + (h / 2 if kind == "pod" else h - 52)


def _path(graph: Graph, boxes: dict[str, tuple[float, float, float, float]]) -> list[str]:
    points = [c for p in graph.path if (c := _center(boxes, p)) is not None]
    if len(points) < 2:
        return []
    out = ['<g class="path">']
    spec = " ".join(f"{x:.0f},{y:.0f}" for x, y in points)
    out.append(
        f'<polyline points="{spec}" fill="none" stroke="{PATH_COLOR}" stroke-width="4" '
        f'stroke-opacity="0.8" marker-end="url(#arrow)"/>'
    )
    for n, (x, y) in enumerate(points, 1):
        out.append(f'<circle cx="{x:.0f}" cy="{y:.0f}" r="10" fill="{PATH_COLOR}"/>')
        out.append(_text(x, y + 4, str(n), 11, "bold", "#fff", "middle"))
    out.append("</g>")
    return out


# ---- DOT and HTML -----------------------------------------------------------------------


def _dot_id(text: str) -> str:
    return json.dumps(text)


def render_dot(graph: Graph) -> str:
    lines = [
        f"digraph {_dot_id('podnet ' + graph.lab)} {{",
        "  rankdir=TB; node [shape=box, fontsize=10];",
    ]
    lines.append(f"  underlay [label={_dot_id(graph.underlay)}, shape=box3d];")
    for node in graph.nodes:
        lines.append(f"  subgraph {_dot_id('cluster_' + node.name)} {{")
        lines.append(f"    label={_dot_id(f'node {node.name} {node.ip} pods {node.pod_cidr}')};")
        bridge = f"{node.name}/bridge"
        lines.append(f"    {_dot_id(bridge)} [label={_dot_id(node.bridge)}];")
        lines.append(f"    {_dot_id(node.name + '/overlay')} [label={_dot_id(node.overlay)}];")
        for pod in node.pods:
            label = f"{pod.key}\\n{pod.ip} ⇄ {pod.veth}" + (
                "\\nterminating" if pod.terminating else ""
            )
            lines.append(f"    {_dot_id('pod ' + pod.key)} [label={_dot_id(label)}];")
            lines.append(f"    {_dot_id('pod ' + pod.key)} -> {_dot_id(bridge)} [dir=none];")
        lines.append(f"    {_dot_id(bridge)} -> {_dot_id(node.name + '/overlay')} [dir=none];")
        lines.append("  }")
        lines.append(f"  {_dot_id(node.name + '/overlay')} -> underlay [dir=none];")
    for svc in graph.services:
        label = f"svc {svc.key}\\n{svc.cluster_ip} {svc.ports}"
        if svc.external_name:
            label = f"svc {svc.key}\\nExternalName: no ClusterIP, no proxy rules"
        me = _dot_id("svc " + svc.key)
        lines.append(f"  {me} [label={_dot_id(label)}, shape=ellipse];")
        for target in svc.endpoints:
            lines.append(f"  {me} -> {_dot_id('pod ' + target)};")
        for address, where in svc.others:
            what = "API server on the host" if svc.key == "default/kubernetes" else where
            if where == "host":
                target = "underlay"
            elif where.startswith("node "):
                target = _dot_id(where.removeprefix("node ") + "/overlay")
            else:
                target = _dot_id(f"outside {address}")
                lines.append(f"  {target} [label={_dot_id(address)}, shape=plaintext];")
            lines.append(f"  {me} -> {target} [label={_dot_id(f'{address} ({what})')}];")
        if svc.external_name:
            dns = _dot_id(f"dns {svc.external_name}")
            lines.append(f"  {dns} [label={_dot_id(svc.external_name)}, shape=note];")
            lines.append(f'  {me} -> {dns} [label="DNS CNAME", style=dashed];')
    for a, b in zip(graph.path, graph.path[1:], strict=False):
        lines.append(f'  {_dot_id(a)} -> {_dot_id(b)} [color="{PATH_COLOR}", penwidth=3];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def render_html(
    svg: str, graph: Graph, refresh_url: str | None = None, seconds: float = 2.0
) -> str:
    """A page with the picture; with `refresh_url`, it fetches a new SVG every `seconds`."""
    script = ""
    if refresh_url is not None:
        script = (
            "<script>\n"
            f"const url = {json.dumps(refresh_url)};\n"
            "async function refresh() {\n"
            "  try {\n"
            "    const r = await fetch(url, {cache: 'no-store'});\n"
            "    if (r.ok) {\n"
            "      document.getElementById('graph').innerHTML = await r.text();\n"
            "      document.getElementById('when').textContent = new Date().toLocaleTimeString();\n"
            "    }\n"
            "  } catch (e) { document.getElementById('when').textContent = 'lab unreachable'; }\n"
            "}\n"
            f"setInterval(refresh, {int(seconds * 1000)});\n"
            "</script>\n"
        )
    status = 'live, refreshed every few seconds: <span id="when"></span>' if refresh_url else ""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n'
        f"<title>podnet graph — lab {escape(graph.lab)}</title>\n"
        "<style>body{margin:0;background:#fbfbf8;font-family:sans-serif}"
        "header{padding:8px 20px;color:#555;font-size:13px}</style>\n"
        f"</head><body>\n<header>podnet graph · lab {escape(graph.lab)} {status}</header>\n"
        f'<div id="graph">\n{svg}</div>\n{script}</body></html>\n'
    )
