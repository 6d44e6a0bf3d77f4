"""podnet.agent.cni."""
