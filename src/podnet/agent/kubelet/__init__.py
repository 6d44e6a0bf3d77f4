"""The kubelet part of the node agent: pods of this node, made real.

Modules: `pods` (the pod sync loop and its pure container decisions), `sandbox` (pod network
namespaces via CNI, /etc/hosts, resolv.conf), `status` (pod phase, conditions and
containerStatuses, pure), `probes` (readiness / liveness / startup), `node` (Node registration,
status and Lease), `runtime` + `launcher` (containers as processes, their own engineer's) and
`server` (the exec/log endpoint the API server relays to). `podnet.agent.main.KubeletComponent`
wires them together.
"""
