"""The reply path: the conntrack entry each DNAT candidate leaves, as `conntrack -L` prints it.

No rule handles the reply: conntrack stored both tuples on the first packet and reverses
the DNAT (and the SNAT, when masqueraded) for every packet that comes back.
"""

from __future__ import annotations

from kubectl_clusterip.model import Candidate, Packet

PROTO_NUMBERS = {"tcp": 6, "udp": 17, "sctp": 132}


def expected_entry(packet: Packet, cand: Candidate) -> str:
    """Original and reply tuples; `dst=`/`dport=` of the reply show the masquerade, if any."""
    reply_dst = (cand.snat_ip or "<node-ip>") if cand.masquerade else packet.src_ip
    reply_dport = "*" if cand.masquerade and cand.random_fully else str(packet.src_port)
    proto = packet.protocol
    return (
        f"{proto} {PROTO_NUMBERS.get(proto, 0)} "
        f"src={packet.src_ip} dst={packet.dst_ip} sport={packet.src_port} dport={packet.dst_port} "
        f"src={cand.ip} dst={reply_dst} sport={cand.port} dport={reply_dport}"
    )


def explain(packet: Packet, cand: Candidate) -> str:
    service = f"{packet.dst_ip}:{packet.dst_port}"
    if not cand.masquerade:
        return (f"{cand.endpoint} replies to {packet.src_ip}:{packet.src_port}; conntrack "
                f"rewrites the reply's source back to {service}, so the client sees the Service.")
    via = cand.snat_ip or "the node's address toward the endpoint"
    port = "a random port" if cand.random_fully else f"port {packet.src_port} when free"
    return (f"{cand.endpoint} replies to {via} ({port}), the masqueraded source; conntrack "
            f"rewrites the destination back to {packet.src_ip}:{packet.src_port} and the source "
            f"back to {service}.")


def reverse_path(packet: Packet, candidates: list[Candidate]) -> list[dict]:
    return [{"endpoint": c.endpoint, "conntrack": expected_entry(packet, c),
             "explanation": explain(packet, c)} for c in candidates]
