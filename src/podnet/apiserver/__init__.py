"""podnet.apiserver: the Kubernetes API server (`podnet server`).

Modules: `registry` (what calls mean, for every kind), `strategies` (what is special about each
kind), `handlers` (HTTP), `relay` (exec/logs to node agents), `allocators` (ClusterIP/NodePort,
called by the Service strategy), `watchcache` (one store watch per kind serving every API
watch), `bootstrap`, `discovery`, `credentials`, `local` (LocalApi) and `server` (wiring).
This package init stays import-light: the CLI reads it at start-up.
"""

DEFAULT_LISTEN = "127.0.0.1:6443"
"""Where `podnet server` listens unless told otherwise (HTTPS)."""

DEFAULT_WATCH_CACHE_SIZE = 10_000
"""Events the watch cache keeps per resource kind (`podnet server --default-watch-cache-size`)."""
