"""podnet.agent.kubelet."""
