"""podnet.api."""
