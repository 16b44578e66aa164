"""runvisor: runs bash commands under supervision."""

__version__ = "0.1.0"
