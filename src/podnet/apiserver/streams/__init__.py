"""The API server's streaming subresources: exec, attach, port-forward and logs of pods.

Each relays a client's connection to the node agent that runs the pod, as the kube-apiserver
relays to the kubelet:

- `locate`: which pod, container, node and agent endpoint a request means (checked before any
  upgrade, so a failure reaches the client as a Status with an HTTP code);
- `dial`: every connection the API server makes to an agent (one place for its transport and
  credentials);
- `remotecommand`: exec and attach, from WebSocket (v5, v4, v1, base64) or SPDY (v2 to v5)
  clients to the agent's v5 WebSocket;
- `portforward`: from SPDY (raw or tunnelled in a WebSocket) or WebSocket-channel clients to
  one agent tunnel per forwarded connection;
- `logs`: the container log stream;
- `spdy` (sans-I/O framing) and `session` (its asyncio driver).
"""
