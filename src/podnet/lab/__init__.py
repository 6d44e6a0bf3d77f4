"""podnet.lab."""
