"""The nft parser: `nft list ruleset` text and `nft -j` JSON become one model.

REAL_TEXT and REAL_RULES are what nft 1.0.6 printed on the test machine after loading
kube-proxy-shaped rules (including v1.36's inline marking, hairpin set and `dnat ip to
numgen … map`), so the formats under test are the tool's own, not our guess of them.
"""

from __future__ import annotations

import json

import pytest

from kubectl_clusterip.dumps import build_dataplanes, detect_format
from kubectl_clusterip.model import ClusterIPError
from kubectl_clusterip.nftables.dataplane import NftablesDataplane, svc_port_name_from_chain
from kubectl_clusterip.nftables.expected import listing, listing_json
from kubectl_clusterip.nftables.json_input import parse_json
from kubectl_clusterip.nftables.render import render_rule
from kubectl_clusterip.nftables.rule_text import _TOKEN, _Tokens, parse_rule_text
from kubectl_clusterip.nftables.ruleset import gc_paused
from kubectl_clusterip.nftables.text_input import parse_text
from kubectl_clusterip.nftables.values import parse_duration

# nft prints tabs; kept as 4 spaces here (long lines continued with a backslash).
REAL_TEXT = """\
table ip kube-proxy {
    comment "rules for kube-proxy"
    set cluster-ips {
        type ipv4_addr
        comment "Active ClusterIPs"
        elements = { 172.30.0.41 }
    }

    map service-ips {
        type ipv4_addr . inet_proto . inet_service : verdict
        comment "ClusterIP, ExternalIP and LoadBalancer IP traffic"
        elements = { 172.30.0.41 . tcp . 80 : goto service-ULMVA6XW-ns1/svc1/tcp/p80 }
    }

    map no-endpoint-services {
        type ipv4_addr . inet_proto . inet_service : verdict
        comment "vmap"
        elements = { 172.30.0.47 . udp . 53 comment "ns6/svc7:dns" : drop,
                 172.30.0.46 . tcp . 80 comment "ns6/svc6:p80" : goto reject-chain }
    }

    set affinity-X-ns1/svc1/tcp/p80__10.180.0.1/80 {
        type ipv4_addr
        size 65535
        flags dynamic,timeout
        timeout 3h
    }

    set hairpin-connections {
        type ipv4_addr . ipv4_addr . inet_proto . inet_service
    }

    map service-nodeports {
        type inet_proto . inet_service : verdict
    }

    chain filter-prerouting-pre-dnat {
        type filter hook prerouting priority dstnat - 10; policy accept;
        ct state new jump cluster-ips-check
    }

    chain filter-output-post-dnat {
        type filter hook output priority -90; policy accept;
    }

    chain nat-prerouting {
        type nat hook prerouting priority dstnat; policy accept;
        jump services
    }

    chain nat-postrouting {
        type nat hook postrouting priority srcnat; policy accept;
    }

    chain filter-forward {
        type filter hook forward priority filter; policy accept;
    }

    chain mark-for-masquerade {
        meta mark set meta mark | 0x00004000
    }

    chain masquerading {
        meta mark & 0x00004000 == 0x00000000 return
        meta mark set meta mark ^ 0x00004000
        masquerade fully-random
        meta mark & 0x00004000 != 0x00000000 meta mark set meta mark ^ 0x00004000\
 masquerade fully-random
        ct status dnat ip saddr . ip daddr . meta l4proto . th dport @hairpin-connections\
 masquerade fully-random
    }

    chain services {
        ip daddr @cluster-ips ip saddr != 10.244.0.0/16 meta mark set meta mark |\
 0x00004000 comment "masquerade clusterIP traffic from outside cluster"
        ip daddr . meta l4proto . th dport vmap @service-ips
        fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap\
 @service-nodeports
    }

    chain reject-chain {
        comment "helper"
        reject
    }

    chain cluster-ips-check {
        ip daddr @cluster-ips reject comment "Reject traffic to invalid ports of ClusterIPs"
        ip daddr 172.30.0.0/16 drop comment "Drop traffic to unallocated ClusterIPs"
        ip daddr { 10.0.0.1-10.0.0.5, 172.30.0.0/16 } drop
    }

    chain service-ULMVA6XW-ns1/svc1/tcp/p80 {
        ip daddr 172.30.0.41 tcp dport 80 ip saddr != 10.0.0.0/8 jump mark-for-masquerade
        ip saddr @affinity-X-ns1/svc1/tcp/p80__10.180.0.1/80 goto\
 endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80
        numgen random mod 2 vmap { 0 : goto\
 endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80, 1 : goto\
 endpoint-AAAA-ns1/svc1/tcp/p80__10.180.0.2/80 }
        meta l4proto tcp dnat ip to numgen random mod 2 map { 0 : 10.244.0.10 . 9898, 1 :\
 10.244.0.8 . 9898 }
    }

    chain endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 {
        ip saddr 10.180.0.1 jump mark-for-masquerade
        update @affinity-X-ns1/svc1/tcp/p80__10.180.0.1/80 { ip saddr }
        meta l4proto tcp dnat to 10.180.0.1:80
    }

    chain endpoint-AAAA-ns1/svc1/tcp/p80__10.180.0.2/80 {
        fib saddr type local jump mark-for-masquerade comment "masquerade local traffic"
        ip saddr != 203.0.113.0/25 drop
        iifname != "veth*" counter packets 0 bytes 0 drop
    }
}
""".replace("    ", "\t")

REAL_RULES = json.loads(r"""
[
 {
  "family": "ip",
  "table": "kube-proxy",
  "chain": "filter-prerouting-pre-dnat",
  "handle": 23,
  "expr": [
   {
    "match": {
     "op": "in",
     "left": {
      "ct": {
       "key": "state"
      }
     },
     "right": "new"
    }
   },
   {
    "jump": {
     "target": "cluster-ips-check"
    }
   }
  ]
 },
 {
  "family": "ip",
  "table": "kube-proxy",
  "chain": "nat-prerouting",
  "handle": 30,
  "expr": [
   {
    "jump": {
     "target": "services"
    }
   }
  ]
 },
 {
  "family": "ip",
  "table": "kube-proxy",
  "chain": "mark-for-masquerade",
  "handle": 24,
  "expr": [
   {
    "mangle": {
     "key": {
      "meta": {
       "key": "mark"
      }
     },
     "value": {
      "|": [
       {
        "meta": {
         "key": "mark"
        }
       },
       16384
      ]
     }
    }
   }
  ]
 },
 {
  "family": "ip",
  "table": "kube-proxy",
  "chain": "masquerading",
  "handle": 25,
  "expr": [
   {
    "match": {
     "op": "==",
     "left": {
      "&": [
       {
        "meta": {
         "key": "mark"
        }
       },
       16384
      ]
     },
     "right": 0
    }
   },
   {
    "return": null
   }
  ]
 },
 {
  "family": "ip",
  "table": "kube-proxy",
  "chain": "masquerading",
  "handle": 26,
  "expr": [
   {
    "mangle": {
     "key": {
      "meta": {
       "key": "mark"
      }
     },
     "value": {
      "^": [
       {
        "meta": {
         "key": "mark"
        }
       },
       16384
      ]
     }
    }
   }
  ]
 },
 {
  "family": "ip",
  "table": "kube-proxy",
  "chain": "masquerading",
  "handle": 27,
  "expr": [
   {
    "masquerade": {
     "flags": "fully-random"
    }
   }
  ]
 },
 {
  "family": "ip",
  "table": "kube-proxy",
  "chain": "masquerading",
  "handle": 28,
  "expr": [
   {
    "match": {
     "op": "!=",
     "left": {
      "&": [
       {
        "meta": {
         "key": "mark"
        }
       },
       16384
      ]
     },
     "right": 0
    }
   },
   {
    "mangle": {
     "key": {
      "meta": {
       "key": "mark"
      }
     },
     "value": {
      "^": [
       {
        "meta": {
         "key": "mark"
        }
       },
       16384
      ]
     }
    }
   },
   {
    "masquerade": {
     "flags": "fully-random"
    }
   }
  ]
 },
 {
  "family": "ip",
  "table": "kube-proxy",
  "chain": "masquerading",
  "handle": 29,
  "expr": [
   {
    "match": {
     "op": "in",
     "left": {
      "ct": {
       "key": "status"
      }
     },
     "right": "dnat"
    }
   },
   {
    "match": {
     "op": "==",
     "left": {
      "concat": [
       {
        "payload": {
         "protocol": "ip",
         "field": "saddr"
        }
       },
       {
        "payload": {
         "protocol": "ip",
         "field": "daddr"
        }
       },
       {
        "meta": {
         "key": "l4proto"
        }
       },
       {
        "payload": {
         "protocol": "th",
         "field": "dport"
        }
       }
      ]
     },
     "right": "@hairpin-connections"
    }
   },
   {
    "masquerade": {
     "flags": "fully-random"
    }
   }
  ]
 },
 {
  "family": "ip",
  "table": "kube-proxy",
  "chain": "services",
  "handle": 31,
  "comment": "masquerade clusterIP traffic from outside cluster",
  "expr": [
   {
    "match": {
     "op": "==",
     "left": {
      "payload": {
       "protocol": "ip",
       "field": "daddr"
      }
     },
     "right": "@cluster-ips"
    }
   },
   {
    "match": {
     "op": "!=",
     "left": {
      "payload": {
       "protocol": "ip",
       "field": "saddr"
      }
     },
     "right": {
      "prefix": {
       "addr": "10.244.0.0",
       "len": 16
      }
     }
    }
   },
   {
    "mangle": {
     "key": {
      "meta": {
       "key": "mark"
      }
     },
     "value": {
      "|": [
       {
        "meta": {
         "key": "mark"
        }
       },
       16384
      ]
     }
    }
   }
  ]
 },
 {
  "family": "ip",
  "table": "kube-proxy",
  "chain": "services",
  "handle": 32,
  "expr": [
   {
    "vmap": {
     "key": {
      "concat": [
       {
        "payload": {
         "protocol": "ip",
         "field": "daddr"
        }
       },
       {
        "meta": {
         "key": "l4proto"
        }
       },
       {
        "payload": {
         "protocol": "th",
         "field": "dport"
        }
       }
      ]
     },
     "data": "@service-ips"
    }
   }
  ]
 },
 {
  "family": "ip",
  "table": "kube-proxy",
  "chain": "services",
  "handle": 34,
  "expr": [
   {
    "match": {
     "op": "==",
     "left": {
      "fib": {
       "result": "type",
       "flags": [
        "daddr"
       ]
      }
     },
     "right": "local"
    }
   },
   {
    "match": {
     "op": "!=",
     "left": {
      "payload": {
       "protocol": "ip",
       "field": "daddr"
      }
     },
     "right": {
      "prefix": {
       "addr": "127.0.0.0",
       "len": 8
      }
     }
    }
   },
   {
    "vmap": {
     "key": {
      "concat": [
       {
        "meta": {
         "key": "l4proto"
        }
       },
       {
        "payload": {
         "protocol": "th",
         "field": "dport"
        }
       }
      ]
     },
     "data": "@service-nodeports"
    }
   }
  ]
 },
 {
  "family": "ip",
  "table": "kube-proxy",
  "chain": "reject-chain",
  "handle": 35,
  "expr": [
   {
    "reject": {
     "type": "icmp",
     "expr": "port-unreachable"
    }
   }
  ]
 },
 {
  "family": "ip",
  "table": "kube-proxy",
  "chain": "cluster-ips-check",
  "handle": 19,
  "comment": "Reject traffic to invalid ports of ClusterIPs",
  "expr": [
   {
    "match": {
     "op": "==",
     "left": {
      "payload": {
       "protocol": "ip",
       "field": "daddr"
      }
     },
     "right": "@cluster-ips"
    }
   },
   {
    "reject": {
     "type": "icmp",
     "expr": "port-unreachable"
    }
   }
  ]
 },
 {
  "family": "ip",
  "table": "kube-proxy",
  "chain": "cluster-ips-check",
  "handle": 20,
  "comment": "Drop traffic to unallocated ClusterIPs",
  "expr": [
   {
    "match": {
     "op": "==",
     "left": {
      "payload": {
       "protocol": "ip",
       "field": "daddr"
      }
     },
     "right": {
      "prefix": {
       "addr": "172.30.0.0",
       "len": 16
      }
     }
    }
   },
   {
    "drop": null
   }
  ]
 },
 {
  "family": "ip",
  "table": "kube-proxy",
  "chain": "cluster-ips-check",
  "handle": 22,
  "expr": [
   {
    "match": {
     "op": "==",
     "left": {
      "payload": {
       "protocol": "ip",
       "field": "daddr"
      }
     },
     "right": {
      "set": [
       {
        "range": [
         "10.0.0.1",
         "10.0.0.5"
        ]
       },
       {
        "prefix": {
         "addr": "172.30.0.0",
         "len": 16
        }
       }
      ]
     }
    }
   },
   {
    "drop": null
   }
  ]
 },
 {
  "family": "ip",
  "table": "kube-proxy",
  "chain": "service-ULMVA6XW-ns1/svc1/tcp/p80",
  "handle": 36,
  "expr": [
   {
    "match": {
     "op": "==",
     "left": {
      "payload": {
       "protocol": "ip",
       "field": "daddr"
      }
     },
     "right": "172.30.0.41"
    }
   },
   {
    "match": {
     "op": "==",
     "left": {
      "payload": {
       "protocol": "tcp",
       "field": "dport"
      }
     },
     "right": 80
    }
   },
   {
    "match": {
     "op": "!=",
     "left": {
      "payload": {
       "protocol": "ip",
       "field": "saddr"
      }
     },
     "right": {
      "prefix": {
       "addr": "10.0.0.0",
       "len": 8
      }
     }
    }
   },
   {
    "jump": {
     "target": "mark-for-masquerade"
    }
   }
  ]
 },
 {
  "family": "ip",
  "table": "kube-proxy",
  "chain": "service-ULMVA6XW-ns1/svc1/tcp/p80",
  "handle": 37,
  "expr": [
   {
    "match": {
     "op": "==",
     "left": {
      "payload": {
       "protocol": "ip",
       "field": "saddr"
      }
     },
     "right": "@affinity-X-ns1/svc1/tcp/p80__10.180.0.1/80"
    }
   },
   {
    "goto": {
     "target": "endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80"
    }
   }
  ]
 },
 {
  "family": "ip",
  "table": "kube-proxy",
  "chain": "service-ULMVA6XW-ns1/svc1/tcp/p80",
  "handle": 39,
  "expr": [
   {
    "vmap": {
     "key": {
      "numgen": {
       "mode": "random",
       "mod": 2,
       "offset": 0
      }
     },
     "data": {
      "set": [
       [
        0,
        {
         "goto": {
          "target": "endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80"
         }
        }
       ],
       [
        1,
        {
         "goto": {
          "target": "endpoint-AAAA-ns1/svc1/tcp/p80__10.180.0.2/80"
         }
        }
       ]
      ]
     }
    }
   }
  ]
 },
 {
  "family": "ip",
  "table": "kube-proxy",
  "chain": "service-ULMVA6XW-ns1/svc1/tcp/p80",
  "handle": 41,
  "expr": [
   {
    "match": {
     "op": "==",
     "left": {
      "meta": {
       "key": "l4proto"
      }
     },
     "right": "tcp"
    }
   },
   {
    "dnat": {
     "family": "ip",
     "addr": {
      "map": {
       "key": {
        "numgen": {
         "mode": "random",
         "mod": 2,
         "offset": 0
        }
       },
       "data": {
        "set": [
         [
          0,
          {
           "concat": [
            "10.244.0.10",
            9898
           ]
          }
         ],
         [
          1,
          {
           "concat": [
            "10.244.0.8",
            9898
           ]
          }
         ]
        ]
       }
      }
     }
    }
   }
  ]
 },
 {
  "family": "ip",
  "table": "kube-proxy",
  "chain": "endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80",
  "handle": 42,
  "expr": [
   {
    "match": {
     "op": "==",
     "left": {
      "payload": {
       "protocol": "ip",
       "field": "saddr"
      }
     },
     "right": "10.180.0.1"
    }
   },
   {
    "jump": {
     "target": "mark-for-masquerade"
    }
   }
  ]
 },
 {
  "family": "ip",
  "table": "kube-proxy",
  "chain": "endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80",
  "handle": 43,
  "expr": [
   {
    "set": {
     "op": "update",
     "elem": {
      "payload": {
       "protocol": "ip",
       "field": "saddr"
      }
     },
     "set": "@affinity-X-ns1/svc1/tcp/p80__10.180.0.1/80"
    }
   }
  ]
 },
 {
  "family": "ip",
  "table": "kube-proxy",
  "chain": "endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80",
  "handle": 44,
  "expr": [
   {
    "match": {
     "op": "==",
     "left": {
      "meta": {
       "key": "l4proto"
      }
     },
     "right": "tcp"
    }
   },
   {
    "dnat": {
     "addr": "10.180.0.1",
     "port": 80
    }
   }
  ]
 },
 {
  "family": "ip",
  "table": "kube-proxy",
  "chain": "endpoint-AAAA-ns1/svc1/tcp/p80__10.180.0.2/80",
  "handle": 45,
  "comment": "masquerade local traffic",
  "expr": [
   {
    "match": {
     "op": "==",
     "left": {
      "fib": {
       "result": "type",
       "flags": [
        "saddr"
       ]
      }
     },
     "right": "local"
    }
   },
   {
    "jump": {
     "target": "mark-for-masquerade"
    }
   }
  ]
 },
 {
  "family": "ip",
  "table": "kube-proxy",
  "chain": "endpoint-AAAA-ns1/svc1/tcp/p80__10.180.0.2/80",
  "handle": 46,
  "expr": [
   {
    "match": {
     "op": "!=",
     "left": {
      "payload": {
       "protocol": "ip",
       "field": "saddr"
      }
     },
     "right": {
      "prefix": {
       "addr": "203.0.113.0",
       "len": 25
      }
     }
    }
   },
   {
    "drop": null
   }
  ]
 },
 {
  "family": "ip",
  "table": "kube-proxy",
  "chain": "endpoint-AAAA-ns1/svc1/tcp/p80__10.180.0.2/80",
  "handle": 47,
  "expr": [
   {
    "match": {
     "op": "!=",
     "left": {
      "meta": {
       "key": "iifname"
      }
     },
     "right": "veth*"
    }
   },
   {
    "counter": {
     "packets": 0,
     "bytes": 0
    }
   },
   {
    "drop": null
   }
  ]
 }
]
""")

REAL_JSON = json.dumps({"nftables": [
    {"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
    {"table": {"family": "ip", "name": "kube-proxy", "handle": 1}},
    {"map": {"family": "ip", "name": "service-ips", "table": "kube-proxy",
             "type": ["ipv4_addr", "inet_proto", "inet_service"], "handle": 2, "map": "verdict",
             "elem": [[{"concat": ["172.30.0.41", "tcp", 80]},
                       {"goto": {"target": "service-ULMVA6XW-ns1/svc1/tcp/p80"}}]]}},
    {"map": {"family": "ip", "name": "no-endpoint-services", "table": "kube-proxy",
             "type": ["ipv4_addr", "inet_proto", "inet_service"], "handle": 3, "map": "verdict",
             "elem": [[{"elem": {"val": {"concat": ["172.30.0.47", "udp", 53]},
                                 "comment": "ns6/svc7:dns"}}, {"drop": None}]]}},
    {"set": {"family": "ip", "name": "affinity-X", "table": "kube-proxy", "type": "ipv4_addr",
             "handle": 17, "size": 65535, "flags": ["timeout"], "timeout": 10800}},
    {"chain": {"family": "ip", "table": "kube-proxy", "name": "filter-prerouting-pre-dnat",
               "handle": 4, "type": "filter", "hook": "prerouting", "prio": -110,
               "policy": "accept"}},
    {"chain": {"family": "ip", "table": "kube-proxy", "name": "masquerading", "handle": 10}},
    *[{"rule": r} for r in REAL_RULES if r["chain"] == "masquerading"],
]})


def test_text_model_tables_chains_priorities():
    rs = parse_text(REAL_TEXT)
    t = rs.table("ip", "kube-proxy")
    assert t is not None and t.comment == "rules for kube-proxy"
    pre = t.chains["filter-prerouting-pre-dnat"]
    assert (pre.type, pre.hook, pre.priority, pre.policy) == ("filter", "prerouting", -110,
                                                              "accept")
    assert t.chains["nat-prerouting"].priority == -100  # "dstnat"
    assert t.chains["nat-postrouting"].priority == 100  # "srcnat"
    assert t.chains["filter-forward"].priority == 0  # "filter"
    assert t.chains["filter-output-post-dnat"].priority == -90
    assert t.chains["reject-chain"].comment == "helper"
    assert not t.chains["services"].is_base


def test_text_sets_maps_concat_intervals_comments_timeouts():
    t = parse_text(REAL_TEXT).table("ip", "kube-proxy")
    svc = t.sets["service-ips"]
    assert svc.is_map and svc.map_type == "verdict"
    assert svc.key_types == ("ipv4_addr", "inet_proto", "inet_service")
    e = svc.lookup(("172.30.0.41", "tcp", 80))
    assert e is not None and e.value == {"goto": {"target": "service-ULMVA6XW-ns1/svc1/tcp/p80"}}
    assert svc.lookup(("172.30.0.41", "udp", 80)) is None
    noeps = t.sets["no-endpoint-services"]
    assert {(x.key, x.comment, json.dumps(x.value)) for x in noeps.elements} == {
        (("172.30.0.47", "udp", 53), "ns6/svc7:dns", '{"drop": null}'),
        (("172.30.0.46", "tcp", 80), "ns6/svc6:p80", '{"goto": {"target": "reject-chain"}}')}
    aff = t.sets["affinity-X-ns1/svc1/tcp/p80__10.180.0.1/80"]
    assert aff.timeout == 10800 and "timeout" in aff.flags  # printed as "timeout 3h"
    assert t.sets["hairpin-connections"].key_types == ("ipv4_addr", "ipv4_addr", "inet_proto",
                                                       "inet_service")


def test_text_rules_round_trip_exactly():
    """Every rule nft printed parses and renders back to the same text."""
    rs = parse_text(REAL_TEXT)
    for ch in rs.table("ip", "kube-proxy").chains.values():
        for r in ch.rules:
            assert "unparsed" not in json.dumps(r.expr), r.text
            assert render_rule(r.expr, r.comment) == r.text


def test_json_rules_render_like_nft_prints_them():
    """nft's own JSON for each rule renders to the line nft's own text listing shows."""
    t = parse_text(REAL_TEXT).table("ip", "kube-proxy")
    for r in REAL_RULES:
        assert render_rule(r["expr"], r.get("comment")) == \
            [x.text for x in t.chains[r["chain"]].rules][_index(REAL_RULES, r)]


def _index(rules: list[dict], rule: dict) -> int:
    return [x for x in rules if x["chain"] == rule["chain"]].index(rule)


def test_json_and_text_give_the_same_expressions():
    t = parse_text(REAL_TEXT).table("ip", "kube-proxy")
    for r in REAL_RULES:
        text_rule = t.chains[r["chain"]].rules[_index(REAL_RULES, r)]
        if "reject" in text_rule.text:  # JSON spells out the default ICMP type
            continue
        assert text_rule.expr == r["expr"], text_rule.text


def test_json_model():
    rs = parse_json(REAL_JSON)
    assert rs.nft_version == "1.0.6"
    t = rs.table("ip", "kube-proxy")
    assert t.chains["filter-prerouting-pre-dnat"].priority == -110
    assert [r.handle for r in t.chains["masquerading"].rules] == [25, 26, 27, 28, 29]
    assert t.chains["masquerading"].rules[0].text == \
        "meta mark & 0x00004000 == 0x00000000 return"
    (e,) = t.sets["no-endpoint-services"].elements
    assert e.key == ("172.30.0.47", "udp", 53) and e.comment == "ns6/svc7:dns"
    assert t.sets["affinity-X"].timeout == 10800


def test_json_pretty_printed_falls_back_to_a_full_decode():
    pretty = json.dumps(json.loads(REAL_JSON), indent=2)
    a, b = parse_json(REAL_JSON), parse_json(pretty)
    ta, tb = a.table("ip", "kube-proxy"), b.table("ip", "kube-proxy")
    assert [r.text for r in ta.chains["masquerading"].rules] == \
        [r.text for r in tb.chains["masquerading"].rules]


def test_bad_json_is_one_line_error():
    with pytest.raises(ClusterIPError, match="not valid JSON"):
        parse_json('{"nftables": [', "x.json")


def test_truncated_text_keeps_what_is_complete_and_says_so():
    rs = parse_text(REAL_TEXT[: len(REAL_TEXT) // 2], "cut.txt")
    assert rs.notes and "the listing stops" in rs.notes[0]


@pytest.mark.parametrize("rule", [
    "ip daddr . meta l4proto . th dport vmap @service-ips",
    "fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap "
    "@service-nodeports",
    'ip daddr 10.96.0.0/12 drop comment "Drop traffic to unallocated ClusterIPs"',
    "ip saddr != { 203.0.113.0/25, 10.0.0.0/8 } drop",
    "ct state established,related accept",
    "meta l4proto tcp dnat to 10.244.1.5:8080",
    "ip6 saddr fd00:10:244:1::5 jump mark-for-masquerade",
    'iifname != "veth*" counter packets 0 bytes 0 drop',
    "numgen random mod 3 vmap { 0 : goto a, 1 : goto b, 2 : goto c }",
    "update @affinity-X { ip saddr }",
    "reject with tcp reset",
])
def test_rule_text_round_trip(rule: str):
    expr, comment = parse_rule_text(rule)
    assert "unparsed" not in json.dumps(expr)
    assert render_rule(expr, comment) == rule


def test_ipv6_dnat_target_parses():
    expr, _ = parse_rule_text("meta l4proto tcp dnat to [fd00:10:244:1::5]:8080")
    assert expr[1] == {"dnat": {"addr": "fd00:10:244:1::5", "port": 8080}}


def test_unknown_syntax_is_kept_as_unparsed_not_guessed():
    expr, _ = parse_rule_text("jhash ip saddr mod 2 vmap { 0 : goto a, 1 : goto b }")
    assert "unparsed" in expr[0]


@pytest.mark.parametrize(("text", "seconds"), [("3h", 10800), ("10800s", 10800),
                                                ("2h59m58s500ms", 10798), ("1d", 86400)])
def test_durations(text: str, seconds: int):
    assert parse_duration(text) == seconds


def test_chain_names_give_service_port_names():
    assert svc_port_name_from_chain("service-ULMVA6XW-ns1/svc1/tcp/p80") == ("ns1/svc1:p80",
                                                                            "tcp")
    assert svc_port_name_from_chain("local-P6J77WGM-riset/hellopod/tcp/") == ("riset/hellopod",
                                                                             "tcp")
    assert svc_port_name_from_chain(
        "endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80") == ("ns1/svc1:p80", "tcp")
    assert svc_port_name_from_chain("services") is None


DUAL = """\
add table ip kube-proxy
add chain ip kube-proxy services
add map ip kube-proxy service-ips { type ipv4_addr . inet_proto . inet_service : verdict ; }
add table ip6 kube-proxy
add chain ip6 kube-proxy services
add map ip6 kube-proxy service-ips { type ipv6_addr . inet_proto . inet_service : verdict ; }
add table ip nat
add chain ip nat KUBE-SERVICES
"""


def test_detect_formats():
    assert detect_format(REAL_TEXT) == "nft-text"
    assert detect_format(REAL_JSON) == "nft-json"


def test_dual_stack_ruleset_gives_one_dataplane_per_family():
    text = listing(DUAL)
    for dump in (text, listing_json(text)):
        dps = build_dataplanes([("dump", dump)])
        assert [(dp.mode, dp.family) for dp in dps] == [("nftables", 4), ("nftables", 6)]


def test_iptables_nft_tables_are_not_nftables_mode():
    """iptables-nft's `table ip nat` with KUBE-SERVICES is iptables mode seen through nft."""
    text = listing("add table ip nat\nadd chain ip nat KUBE-SERVICES\n"
                   "add chain ip nat KUBE-SVC-ABC\nadd rule ip nat KUBE-SERVICES jump KUBE-SVC-ABC\n")
    dps = NftablesDataplane.from_text(text)
    assert not dps[0].has_kube_proxy()
    with pytest.raises(ClusterIPError, match="iptables mode"):
        build_dataplanes([("nft.txt", text)])
    with pytest.raises(ClusterIPError, match="no kube-proxy rules"):
        build_dataplanes([("nft.txt", listing("add table inet filter\n"
                                              "add chain inet filter input\n"))])


# --------------------------------------------------------------------------- fast paths

ELEMENTS_TEXT = """\
table ip kube-proxy {
    map service-ips {
        type ipv4_addr . inet_proto . inet_service : verdict
        elements = { 110.96.0.1 . tcp . 80 : goto a,
                     10.96.0.1 . udp . 80 : goto b, 10.96.0.1 . tcp . 80 : goto c,
                     10.96.0.2 . tcp . 0x50 : goto d, 10.96.0.3 . tcp . 80 : drop }
    }
    set cidrs {
        type ipv4_addr
        flags interval
        elements = { 10.96.0.0/16, 10.244.0.1 }
    }
    map with-options {
        type ipv4_addr . inet_proto . inet_service : verdict
        elements = { 10.96.0.4 . tcp . 80 timeout 3h : goto e, 10.96.0.5 . tcp . 80 : goto f }
    }
}
"""


@pytest.mark.parametrize(("name", "key"), [
    ("service-ips", ("10.96.0.1", "tcp", 80)),  # not the 110.96.0.1 element's tail
    ("service-ips", ("10.96.0.1", "udp", 80)),
    ("service-ips", ("10.96.0.3", "tcp", 80)),  # a plain verdict
    ("service-ips", ("10.96.0.2", "tcp", 80)),  # spelled 0x50: found by the full parse
    ("service-ips", ("10.96.0.9", "tcp", 80)),  # a miss
    ("service-ips", ("0.1 . tcp", 80)),
    ("cidrs", "10.244.0.1"),
    ("cidrs", "10.96.3.3"),  # only the prefix matches
    ("with-options", ("10.96.0.4", "tcp", 80)),
    ("with-options", ("10.96.0.5", "tcp", 80)),
])
def test_text_lookup_before_and_after_the_full_parse_agree(name: str, key):
    """A lookup on unparsed element text answers exactly as the parsed elements do."""
    first = parse_text(ELEMENTS_TEXT).table("ip", "kube-proxy").sets[name]
    full = parse_text(ELEMENTS_TEXT).table("ip", "kube-proxy").sets[name]
    assert full.elements  # parsed in full first
    a, b = first.lookup(key), full.lookup(key)
    assert (a is None) == (b is None)
    if a is not None:
        assert (a.key, a.value, a.comment, a.expires) == (b.key, b.value, b.comment, b.expires)


def test_text_lookup_hit_does_not_parse_the_other_elements():
    svc = parse_text(ELEMENTS_TEXT).table("ip", "kube-proxy").sets["service-ips"]
    e = svc.lookup(("10.96.0.1", "tcp", 80))
    assert e is not None and e.value == {"goto": {"target": "c"}}
    assert svc._elements is None  # still text: the next lookup can do the same


@pytest.mark.parametrize("rule", [
    "ip saddr 10.244.0.1 jump mark-for-masquerade",
    "meta l4proto tcp dnat to 10.244.0.1:8080",
    'ip daddr 10.96.0.0/12 drop comment "Drop traffic, to unallocated ClusterIPs"',
    "ct state established,related accept",
    "numgen random mod 2 vmap { 0 : goto a, 1 : goto b }",
    "ip saddr\t10.0.0.1  \u2003 drop",
])
def test_plain_rules_tokenise_like_the_regex(rule: str):
    assert _Tokens(rule).toks == [*_TOKEN.findall(rule), None, None]


def test_text_rules_with_handles():
    """`nft -a list ruleset`: the handle is cut off the rule text and kept."""
    text = ("table ip t { # handle 3\n\tchain c { # handle 7\n"
            "\t\tip saddr 10.0.0.1 counter packets 0 bytes 0 drop # handle 9\n"
            "\t\tip daddr 10.0.0.2 accept\n"
            "\t\tip daddr 10.0.0.3 accept #  handle  11 \n\t}\n}\n")
    ch = parse_text(text).table("ip", "t").chains["c"]
    assert ch.handle == 7
    assert [(r.handle, r.text) for r in ch.rules] == [
        (9, "ip saddr 10.0.0.1 counter packets 0 bytes 0 drop"),
        (None, "ip daddr 10.0.0.2 accept"), (11, "ip daddr 10.0.0.3 accept")]


def test_gc_paused_restores_the_collector():
    import gc

    assert gc.isenabled()
    with gc_paused():
        assert not gc.isenabled()
        with gc_paused():
            pass
        assert not gc.isenabled()
    assert gc.isenabled()
