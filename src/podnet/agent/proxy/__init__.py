"""podnet.agent.proxy."""
