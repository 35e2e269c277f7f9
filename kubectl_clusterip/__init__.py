"""Trace and diagnose Kubernetes ClusterIP Services, one request at a time."""

__version__ = "0.1.0"
