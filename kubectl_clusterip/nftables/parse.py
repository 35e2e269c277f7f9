"""Parse `nft -j list ruleset` (preferred) or `nft list ruleset` text into one model.

Both inputs end up as libnftables-json expressions (the JSON input as nft printed it, the
text parsed into the same shapes, see rule_text), so the walker has one vocabulary and a
rule read from text or from JSON gives the same answer. Rule text shown to people is what
nft printed (text input) or rendered back to nft syntax from the JSON (render).
"""

from __future__ import annotations

from kubectl_clusterip.nftables.json_input import parse_json
from kubectl_clusterip.nftables.ruleset import Ruleset
from kubectl_clusterip.nftables.text_input import parse_text


def looks_like_nft_json(text: str) -> bool:
    head = text[:200].lstrip()
    return head.startswith("{") and '"nftables"' in head


def parse_ruleset(text: str, source: str = "") -> Ruleset:
    """Either format, recognised from the content."""
    if looks_like_nft_json(text):
        return parse_json(text, source)
    return parse_text(text, source)
