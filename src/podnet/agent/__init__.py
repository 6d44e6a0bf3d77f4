"""podnet.agent."""
