"""podnet: the Kubernetes pod network, built for real in Python."""

__version__ = "0.1.0"
