"""The live-cluster edge: kubeconfig, API calls, the node debug pod, DNS, and capture.

Everything here talks to the world and decides as little as it can; the engine only ever
sees the Snapshot that `capture.capture_snapshot` returns.
"""
