"""Regenerate the nftables-mode dumps in this directory (run as root: `python generate.py`).

The rules are kube-proxy's nftables-mode ruleset for the test cluster of tests/snapshots.py
(kubectl_clusterip.nftables.expected, after pkg/proxy/nftables/proxier.go), for the cases
`healthy` and `session-affinity` merged: loaded into a throwaway network namespace with the
real `nft -f` and read back with `nft list ruleset` (nft-ruleset.txt) and
`nft -j list ruleset` (nft-ruleset.json), so both files are nft's own output.
The hypothesis suite (tests/test_fuzz_inputs.py) mutates them.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent.parent))  # tests/: netlab, test_diagnose_nftables


def main() -> None:
    from netlab import kernel_round_trip
    from test_diagnose_nftables import nft_snapshot

    text = nft_snapshot("session-affinity").nodes["kind-worker"].files["nft-ruleset.txt"]
    plain, as_json = kernel_round_trip(text, ["nft", "-f", "-"], ["nft", "list", "ruleset"],
                                       ["nft", "-j", "list", "ruleset"])
    (HERE / "nft-ruleset.txt").write_text(plain)
    (HERE / "nft-ruleset.json").write_text(as_json)


if __name__ == "__main__":
    main()
