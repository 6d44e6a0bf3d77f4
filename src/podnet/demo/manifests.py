"""The Kubernetes objects the demo applies, as ordinary manifests a reader could save and apply.

They use only podnet's built-in images: `busybox` and the agnhost-compatible test image
(`registry.k8s.io/e2e-test-images/agnhost:2.52`), whose `netexec` answers `/hostname` over HTTP.
"""

from __future__ import annotations

AGNHOST = "registry.k8s.io/e2e-test-images/agnhost:2.52"

TWO_CONTAINER_POD = f"""\
apiVersion: v1
kind: Pod
metadata:
  name: twins
  labels: {{app: twins}}
spec:
  nodeName: node1
  containers:
  - name: web
    image: {AGNHOST}
    args: ["netexec", "--http-port=8080", "--udp-port=8081"]
    ports: [{{containerPort: 8080}}]
    # Ready means answering: without a probe a pod is Ready once its containers have
    # started, and the sidecar's first request could beat netexec's listen
    readinessProbe:
      httpGet: {{path: /readyz, port: 8080}}
      periodSeconds: 1
  - name: sidecar
    image: busybox
    command: ["sh", "-c", "while true; do sleep 3600; done"]
"""


def netexec_pod(name: str, node: str) -> str:
    """A single-container pod pinned to a node, answering its name on :8080/hostname."""
    return f"""\
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  labels: {{app: {name}}}
spec:
  nodeName: {node}
  containers:
  - name: netexec
    image: {AGNHOST}
    args: ["netexec", "--http-port=8080", "--udp-port=8081"]
"""


def client_pod(name: str, node: str) -> str:
    """A busybox pod pinned to a node, to send requests from."""
    return f"""\
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  labels: {{app: client}}
spec:
  nodeName: {node}
  containers:
  - name: client
    image: busybox
    command: ["sh", "-c", "while true; do sleep 3600; done"]
"""


HOSTNAMES_DEPLOYMENT = f"""\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: hostnames
spec:
  replicas: 3
  selector:
    matchLabels: {{app: hostnames}}
  template:
    metadata:
      labels: {{app: hostnames}}
    spec:
      containers:
      - name: netexec
        image: {AGNHOST}
        # keep serving for a few seconds after SIGTERM: every node's kube-proxy must first
        # see the endpoint go (upstream's advice; a preStop sleep does the same)
        args: ["netexec", "--http-port=8080", "--udp-port=8081", "--delay-shutdown=5"]
        ports: [{{containerPort: 8080, name: http}}]
        readinessProbe:
          httpGet: {{path: /readyz, port: 8080}}
          periodSeconds: 1
"""

HOSTNAMES_SERVICE = """\
apiVersion: v1
kind: Service
metadata:
  name: hostnames
spec:
  selector: {app: hostnames}
  ports:
  - name: http
    port: 80
    targetPort: http
"""
