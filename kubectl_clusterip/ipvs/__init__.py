"""kube-proxy's IPVS mode: the IPVS table, the ipsets, and the iptables rules it still writes."""
