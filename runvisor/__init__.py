"""runvisor: runs bash commands under supervision. How it is built: docs/architecture.md."""

__version__ = "0.1.0"
