"""podnet.images."""
