"""The live-cluster edge: kubeconfig, API calls, the node debug pod, DNS, and capture.

Everything here talks to the world and decides as little as it can; the engine only ever
sees the Snapshot that `capture.capture_snapshot` returns.
"""

# Here, not in debugpod.py: the CLI shows it in --help without loading the cluster modules.
DEFAULT_IMAGE = "nicolaka/netshoot:v0.13"  # public; iptables (both backends), nft, ipvsadm,
# ipset, conntrack, iproute2 and curl
