"""podnet.agent.flannel."""
