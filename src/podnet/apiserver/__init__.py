"""podnet.apiserver: the Kubernetes API server (`podnet server`).

Modules: `registry` (what calls mean), `handlers` (HTTP), `relay` (exec/logs to node agents),
`allocators` (ClusterIP/NodePort), `bootstrap`, `discovery`, `credentials`, `local` (LocalApi)
and `server` (wiring). This package init stays import-light: the CLI reads it at start-up.
"""

DEFAULT_LISTEN = "127.0.0.1:6443"
"""Where `podnet server` listens unless told otherwise (HTTPS)."""
