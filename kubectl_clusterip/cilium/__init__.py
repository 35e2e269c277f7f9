"""Cilium's kube-proxy replacement: the agent's services, its BPF maps, one request's path."""
