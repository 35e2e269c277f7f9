"""kube-proxy's nftables mode: parse `nft list ruleset` (JSON or text), walk one packet."""
