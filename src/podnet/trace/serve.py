"""`podnet graph --watch`: the lab's picture, served on loopback and redrawn as it changes.

What belongs here: `serve_graph(plan, port, interval)` — a small HTTP server on 127.0.0.1
with two paths: `/` (the HTML page, which fetches `/graph.svg` every `interval` seconds) and
`/graph.svg` (the current picture). A picture is re-read from the lab at most every
`interval` seconds, however many pages ask; a failure to read the lab answers 503 with the
reason, and the page keeps the last picture.

Invariants: binds only 127.0.0.1; serves until Ctrl-C (exit code 0); reads the lab, never
changes it.
"""

from __future__ import annotations

import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from podnet.trace.graph import build_graph, render_html, render_svg
from podnet.trace.snapshot import SnapshotError, capture_snapshot, cluster_snapshot


class _Pictures:
    """The latest SVG, redrawn at most every `interval` seconds."""

    def __init__(self, plan: Any, interval: float) -> None:
        self.plan = plan
        self.interval = interval
        self.lock = threading.Lock()
        self.svg = ""
        self.page = ""
        self.at = 0.0

    def current(self) -> tuple[str, str]:
        with self.lock:
            if not self.svg or time.monotonic() - self.at >= self.interval:
                graph = build_graph(
                    capture_snapshot(cluster_snapshot(self.plan), None, rules=False)
                )
                self.svg = render_svg(graph)
                self.page = render_html(self.svg, graph, "/graph.svg", self.interval)
                self.at = time.monotonic()
            return self.page, self.svg


def serve_graph(plan: Any, port: int, interval: float) -> int:
    pictures = _Pictures(plan, interval)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path not in ("/", "/graph.svg"):
                self.send_error(404, "only / and /graph.svg")
                return
            try:
                page, svg = pictures.current()
            except SnapshotError as exc:
                self.send_error(503, str(exc))
                return
            body = (page if self.path == "/" else svg).encode()
            kind = "text/html" if self.path == "/" else "image/svg+xml"
            self.send_response(200)
            self.send_header("Content-Type", f"{kind}; charset=utf-8")
            self.send_header("Cache-Control", "no-store")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return None  # the terminal shows the URL, not every refresh

    # Ctrl-C and SIGTERM end it even when started with SIGINT ignored (a background job of a
    # shell without job control inherits SIG_IGN, and Python then never raises KeyboardInterrupt)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.default_int_handler)
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print(f"podnet graph: lab {plan.name} at http://127.0.0.1:{server.server_port}/ (Ctrl-C ends)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
