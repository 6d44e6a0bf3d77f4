"""The kubelet part of the node agent: pods of this node, made real.

`component.KubeletComponent` wires it together (like flannel's and the proxy's components).

The pod loop and its parts: `pods` (`PodManager`: list/watch, one worker per pod, when a pod
is synced), `podsync` (`PodSync`: one pod made to match — sandbox, containers, probes,
status), and the pure ones: `decisions` (start / kill / wait per container, back-off), `podspec`
(a container as the runtime's config, its probes), `dnsconfig` (hosts, resolv.conf, hostname),
`volumes` (hostPath mounts), `status` (phase, conditions, containerStatuses), `probes`,
`sandbox` (pod network namespaces via CNI) and `node` (Node registration, status and Lease).

The seam to the runtime: `cri` (Sandbox, ContainerConfig, ContainerState and the
`ContainerRuntime` protocol). Its implementation: `runtime` (containers as processes, state on
disk), `launcher` (the shim, a separate process) with the stdlib-only modules it imports —
`launchspec` (the resolved spec it is handed), `logformat` (CRI log files), `attachsocket`,
`syscalls` — and `zygote` (the warm launcher). `server` is the exec/attach/port-forward/log
endpoint the API server relays to.
"""
