"""`iptables -L -n [-v] [-x] [--line-numbers]` turned back into the rule specs iptables-save
prints, so a listing becomes the same model and the walker never knows the difference.

A listing prints each match through the extension's own `print` function (libxt_*.c), not
its `save`: `tcp dpt:80` for `-m tcp --dport 80`, `MARK or 0x4000` for `-j MARK --set-xmark
0x4000/0x4000`. `spec()` maps each printed form back, in rule order. iptables 1.6 and 1.8
differ in the `prot` column (names vs numbers) and a few spellings; both are read. A match
this module does not know is kept as `-m listing --text "…"`, which the walker reports as
undecided rather than guessing.
"""

from __future__ import annotations

import re

from kubectl_clusterip.model import ClusterIPError
from kubectl_clusterip.paste import shorten

CHAIN = re.compile(r"^Chain (\S+) \((?:policy (\S+)[^)]*|\d+ references?|[^)]*)\)\s*$")
_OPTS = frozenset(("--", "-f", "!f"))
_ADDRESS = re.compile(r"^!?(?:[0-9.]+(?:/[0-9.]+)?|[0-9a-fA-F:]*:[0-9a-fA-F:.]*(?:/\d+)?|"
                      r"anywhere)$")
_PROTOCOLS = {"0": None, "all": None, "6": "tcp", "17": "udp", "132": "sctp", "1": "icmp",
              "58": "ipv6-icmp", "136": "udplite"}
# /etc/services names iptables -L prints for ports without -n (the ones kube-proxy meets).
PORT_NAMES = {
    "ftp": 21, "ssh": 22, "telnet": 23, "smtp": 25, "domain": 53, "bootps": 67, "bootpc": 68,
    "tftp": 69, "http": 80, "www": 80, "kerberos": 88, "pop3": 110, "sunrpc": 111, "ntp": 123,
    "imap2": 143, "imap": 143, "snmp": 161, "ldap": 389, "https": 443, "microsoft-ds": 445,
    "syslog": 514, "submission": 587, "ldaps": 636, "imaps": 993, "pop3s": 995,
    "openvpn": 1194, "ms-sql-s": 1433, "mysql": 3306, "postgresql": 5432, "http-alt": 8080,
    "webcache": 8080, "redis": 6379, "amqp": 5672, "etcd-client": 2379, "etcd-server": 2380,
    "hkp": 11371, "domain-s": 853, "nfs": 2049,
}
_TCP_FLAG_BITS = (("FIN", 0x01), ("SYN", 0x02), ("RST", 0x04), ("PSH", 0x08), ("ACK", 0x10),
                  ("URG", 0x20))


class ListingError(ClusterIPError):
    pass


class ListingLines(dict):
    """chain -> rule specs, where a chain's `iptables -L` rows become specs the first time the
    chain is read: a trace reads a few hundred of a node's 200,000 rows, so reading a listing
    costs about what reading iptables-save does. Keys are known up front; `dict.values(x)`
    gives the raw rows (for counting)."""

    def __init__(self, columns: dict[str, list[str]], family: int, source: str,
                 first_line: dict[str, int], numbers: dict[str, list[int]]):
        super().__init__()
        self.columns, self.family, self.source = columns, family, source
        self.first_line = first_line  # chain -> line number of its first row
        self.numbers = numbers  # chain -> every row's line, for chains whose rows had gaps
        self._done: set[str] = set()

    def __getitem__(self, chain: str) -> list[str]:
        rows = dict.__getitem__(self, chain)
        if chain not in self._done:
            columns, family = self.columns[chain], self.family
            converted = []
            for i, row in enumerate(rows):
                try:
                    converted.append(rule_spec(chain, row, columns, family))
                except ListingError as e:
                    at = self.numbers.get(chain)
                    n = at[i] if at else self.first_line.get(chain, 0) + i
                    raise ClusterIPError(f"{self.source}:{n}: {e}") from None
            rows[:] = converted
            self._done.add(chain)
        return rows

    def get(self, chain, default=None):
        return self[chain] if chain in self else default

    def setdefault(self, chain, default=None):
        if chain in self:
            return self[chain]
        self[chain] = default
        return default

    def __setitem__(self, chain, rows) -> None:
        dict.__setitem__(self, chain, rows)
        self._done.add(chain)

    def add_row(self, chain: str, row: str) -> None:
        """A raw row, converted when its chain is first read."""
        if chain not in self:
            dict.__setitem__(self, chain, [])
        dict.__getitem__(self, chain).append(row)

    def values(self):
        return [self[c] for c in self]

    def items(self):
        return [(c, self[c]) for c in self]


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _port(value: str) -> str:
    """A printed port or range: numbers, or /etc/services names when -n was not given."""
    parts = value.split(":")
    out = []
    for p in parts:
        if p.isdigit() or p == "":
            out.append(p)
        elif p in PORT_NAMES:
            out.append(str(PORT_NAMES[p]))
        else:
            raise ListingError(f"port {shorten(p, 40)!r} is a service name this tool does not "
                               "know: list with `iptables -L -n` (numeric) or use iptables-save")
    return ":".join(out)


def _flags(value: str) -> str:
    if value.startswith("0x"):
        n = int(value, 16)
        return ",".join(name for name, bit in _TCP_FLAG_BITS if n & bit) or "NONE"
    return value


def _address(value: str, family: int) -> tuple[bool, str | None]:
    neg = value.startswith("!")
    value = value[1:] if neg else value
    if value in ("0.0.0.0/0", "::/0", "anywhere"):
        return neg, None
    if "/" not in value:
        value += "/128" if ":" in value else "/32"
    return neg, value


def header_columns(line: str) -> list[str] | None:
    """The column names of a listing's header line, or None if it is not one."""
    words = line.split()
    if "target" in words and "prot" in words and "source" in words:
        return words
    return None


def rule_spec(chain: str, line: str, columns: list[str], family: int) -> str:
    """One listing row as the `-A CHAIN …` line iptables-save prints for the same rule."""
    tokens = line.split()
    skip = sum(1 for c in ("num", "pkts", "bytes") if c in columns)
    src_at = next((i for i in range(skip, len(tokens) - 1)
                   if _ADDRESS.match(tokens[i]) and _ADDRESS.match(tokens[i + 1])), None)
    if src_at is None:
        raise ListingError(f"no source and destination columns in {shorten(line.strip())!r}: "
                           "list with `iptables -L -n` (numeric addresses) or use iptables-save")
    has_io = "in" in columns and "out" in columns
    lead = tokens[skip: src_at - (2 if has_io else 0)]
    in_if, out_if = (tokens[src_at - 2], tokens[src_at - 1]) if has_io else ("*", "*")
    if len(lead) == 3 or (len(lead) == 2 and lead[1] not in _OPTS):
        target, prot = lead[0], lead[1]
        opt = lead[2] if len(lead) == 3 else "--"
    elif len(lead) == 2:
        target, prot, opt = None, lead[0], lead[1]
    elif len(lead) == 1:
        target, prot, opt = None, lead[0], "--"
    else:
        raise ListingError(f"cannot read the columns of {shorten(line.strip())!r}")
    rest = line.split(None, src_at + 2)[src_at + 2] if len(tokens) > src_at + 2 else ""
    out = [f"-A {chain}"]
    neg, s = _address(tokens[src_at], family)
    if s:
        out.append(f"{'! ' if neg else ''}-s {s}")
    neg, d = _address(tokens[src_at + 1], family)
    if d:
        out.append(f"{'! ' if neg else ''}-d {d}")
    for flag, iface in (("-i", in_if), ("-o", out_if)):
        if iface not in ("*", "any"):
            out.append(f"! {flag} {iface[1:]}" if iface.startswith("!") else f"{flag} {iface}")
    pneg = prot.startswith("!")
    proto = _PROTOCOLS.get(prot.lstrip("!"), prot.lstrip("!"))
    if proto:
        out.append(f"{'! ' if pneg else ''}-p {proto}")
    if opt in ("-f", "!f"):
        out.append("! -f" if opt == "!f" else "-f")
    out.extend(_extensions(rest, target))
    return " ".join(out)


def _extensions(text: str, target: str | None) -> list[str]:
    """The match and target text after the columns, back in iptables-save's words."""
    out: list[str] = []
    target_opts: list[str] = []
    words = _Words(text)
    while not words.done():
        if words.peek().startswith("/*"):
            out.append(f"-m comment --comment {_quote(words.comment())}")
            continue
        neg = words.take_if("!")
        w = words.take()
        if w in ("tcp", "udp", "sctp", "udplite"):
            out.append(f"-m {w}" + _proto_options(words))
        elif w == "multiport":
            kind = words.take()  # dports / sports / ports
            n = "! " if words.take_if("!") else ""
            out.append(f"-m multiport {n}--{kind} {_port_list(words.take())}")
        elif w == "statistic":
            out.append("-m statistic" + _statistic(words))
        elif w == "recent:":
            out.append("-m recent" + _recent(words, neg))
        elif w == "ADDRTYPE" and words.take_if("match"):
            out.append("-m addrtype" + _addrtype(words))
        elif w == "mark" and words.take_if("match"):
            n = "! " if words.take_if("!") else ""
            out.append(f"-m mark {n}--mark {words.take()}")
        elif w in ("ctstate", "ctstatus", "ctproto", "ctorigsrc", "ctorigdst", "ctreplsrc",
                   "ctrepldst", "ctorigsrcport", "ctorigdstport", "ctdir"):
            out.append(f"-m conntrack {'! ' if neg else ''}--{w} {words.take()}")
        elif w == "state":
            out.append(f"-m state {'! ' if neg else ''}--state {words.take()}")
        elif w == "match-set":
            name, flags = words.take(), words.take()
            out.append(f"-m set {'! ' if neg else ''}--match-set {name} {flags}")
        elif w == "PHYSDEV" and words.take_if("match"):
            rest = []
            while not words.done() and words.peek().startswith(("--physdev", "!")):
                rest.append(words.take())
            out.append("-m physdev " + " ".join(rest))
        elif w == "pkttype" and words.take_if("type"):
            out.append(f"-m pkttype {'! ' if neg else ''}--pkt-type {words.take()}")
        elif target is not None and not neg and \
                (opts := _target_options(w, target, words)) is not None:
            target_opts.extend(opts)
        else:
            text_left = " ".join([w, *words.rest()])
            out.append(f"-m listing --text {_quote(('! ' if neg else '') + text_left)}")
    if target:
        out.append(f"-j {target}" + "".join(f" {o}" for o in target_opts))
    return out


def _proto_options(words: _Words) -> str:
    out = ""
    while not words.done():
        w = words.peek()
        key, _, value = w.partition(":")
        if key in ("dpt", "spt", "dpts", "spts") and value:
            words.take()
            neg = value.startswith("!")
            value = value.lstrip("!")
            name = "--dport" if key.startswith("d") else "--sport"
            out += f" {'! ' if neg else ''}{name} {_port(value)}"
        elif key == "flags" and value:
            words.take()
            neg = value.startswith("!")
            mask, _, comp = value.lstrip("!").partition("/")
            out += f" {'! ' if neg else ''}--tcp-flags {_flags(mask)} {_flags(comp)}"
        elif w.startswith("option="):
            words.take()
            out += f" --tcp-option {w.split('=', 1)[1].lstrip('!')}"
        else:
            break
    return out


def _port_list(value: str) -> str:
    return ",".join(_port(p) for p in value.split(","))


def _statistic(words: _Words) -> str:
    out = ""
    while not words.done() and words.peek() in ("mode", "probability", "every", "packet", "!"):
        w = words.take()
        if w == "!":
            out += " !"
            continue
        out += f" --{w} {words.take()}"
    return out


_RECENT_ACTIONS = {"SET": "--set", "CHECK": "--rcheck", "UPDATE": "--update",
                   "REMOVE": "--remove"}


def _recent(words: _Words, neg: bool) -> str:
    """`recent: CHECK seconds: 10800 reap name: X side: source mask: 255.255.255.255`."""
    action = _RECENT_ACTIONS.get(words.take(), "--rcheck")
    opts = {"seconds": "", "reap": "", "hit_count": "", "TTL-Match": "", "name": "", "side": "",
            "mask": ""}
    while not words.done():
        w = words.peek().rstrip(":")
        if w not in opts:
            break
        words.take()
        opts[w] = "yes" if w in ("reap", "TTL-Match") else words.take()
    out = f" {'! ' if neg else ''}{action}"
    if opts["seconds"]:
        out += f" --seconds {opts['seconds']}"
    if opts["reap"]:
        out += " --reap"
    if opts["hit_count"]:
        out += f" --hitcount {opts['hit_count']}"
    if opts["TTL-Match"]:
        out += " --rttl"
    out += f" --name {opts['name'] or 'DEFAULT'}"
    if opts["mask"]:
        out += f" --mask {opts['mask']}"
    return out + (" --rdest" if opts["side"] == "dest" else " --rsource")


def _addrtype(words: _Words) -> str:
    out = ""
    while not words.done():
        w = words.peek()
        if w in ("src-type", "dst-type"):
            words.take()
            value = words.take()
            neg = value.startswith("!") or words.take_if("!")
            if neg and value == "!":
                value = words.take()
            out += f" {'! ' if neg else ''}--{w} {value.lstrip('!')}"
        elif w in ("limit-in", "limit-out"):
            words.take()
            out += f" --limit-iface-{w[6:]}"
        else:
            break
    return out


_MARK_OPS = ("or", "set", "xset", "and", "xor")


def _target_options(w: str, target: str, words: _Words) -> list[str] | None:
    """Target text (`to:IP:PORT`, `MARK or 0x4000`, `reject-with …`) as save options."""
    if target in ("DNAT", "SNAT") and w.startswith("to:"):
        opt = "--to-destination" if target == "DNAT" else "--to-source"
        return [f"{opt} {w[3:]}"]
    if target in ("DNAT", "SNAT", "MASQUERADE") and w in ("random", "random-fully",
                                                            "persistent"):
        return [f"--{w}"]
    if target == "MASQUERADE" and w == "masq" and words.take_if("ports:"):
        return [f"--to-ports {words.take()}"]
    if target == "REDIRECT" and w == "redir" and words.take_if("ports"):
        return [f"--to-ports {words.take()}"]
    if target == "REJECT" and w == "reject-with":
        return [f"--reject-with {words.take()}"]
    if target == "MARK" and w == "MARK" and words.peek() in _MARK_OPS:
        op, value = words.take(), words.take()
        v, _, m = value.partition("/")
        if op == "or":
            return [f"--set-xmark {v}/{v}"]
        if op == "set":
            return [f"--set-xmark {v}/0xffffffff"]
        if op == "xset":
            return [f"--set-xmark {v}/{m or '0xffffffff'}"]
        if op == "xor":
            return [f"--set-xmark {v}/0x0"]
        return [f"--set-xmark 0x0/{(~int(v, 0)) & 0xFFFFFFFF:#x}"]  # and
    if target in ("LOG", "NFLOG") and w in ("LOG", "nflog-prefix", "nflog-group"):
        words.rest()  # logging only: nothing the walk depends on
        return []
    return None


class _Words:
    """A cursor over the match text; comments (`/* … */`) keep their inner spacing."""

    def __init__(self, text: str):
        self.text = text.strip()
        self.pos = 0
        self._skip()

    def _skip(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] == " ":
            self.pos += 1

    def done(self) -> bool:
        return self.pos >= len(self.text)

    def peek(self) -> str:
        end = self.text.find(" ", self.pos)
        return self.text[self.pos: end if end >= 0 else len(self.text)]

    def take(self) -> str:
        w = self.peek()
        self.pos += len(w)
        self._skip()
        return w

    def take_if(self, word: str) -> bool:
        if not self.done() and self.peek() == word:
            self.take()
            return True
        return False

    def comment(self) -> str:
        end = self.text.find(" */", self.pos)
        if end < 0:
            raise ListingError(f"unterminated comment in {shorten(self.text)!r}")
        inner = self.text[self.pos + 3: end]
        self.pos = end + 3
        self._skip()
        return inner

    def rest(self) -> list[str]:
        words = self.text[self.pos:].split()
        self.pos = len(self.text)
        return words
