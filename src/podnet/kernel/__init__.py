"""podnet.kernel."""
