"""podnet.apiserver: the Kubernetes API server (`podnet server`).

Modules: `registry` (what calls mean, for every kind), `strategies` (what is special about each
kind), `handlers` (HTTP), `relay` (exec/logs to node agents), `allocators` (ClusterIP/NodePort,
called by the Service strategy), `bootstrap`, `discovery`, `credentials`, `local` (LocalApi)
and `server` (wiring). This package init stays import-light: the CLI reads it at start-up.
"""

DEFAULT_LISTEN = "127.0.0.1:6443"
"""Where `podnet server` listens unless told otherwise (HTTPS)."""
