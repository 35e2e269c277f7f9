"""A Kubernetes-like node built from network namespaces, for tests against the real kernel.

This is a helper module (not a test file). It needs root, ``ip`` (iproute2), and for the
rule/conntrack helpers ``iptables``/``ip6tables`` (nft and legacy), ``nft`` and ``conntrack``.
Use :func:`require_root_tools` / :func:`kernel_lab` to skip cleanly elsewhere.

Topology (all addresses exist only inside the namespaces a Lab creates)::

                       uplink ns "uplink": bridge br0  (172.18.0.0/16, fd00:172:18::/64)
           +-------------------+----------------------------+------------------+
       eth0 172.18.0.2     eth0 172.18.0.4                 eth0 172.18.0.3    ...
       fd00:172:18::2      fd00:172:18::4                  fd00:172:18::3
       ns "node"           ns "node2" (optional)           ns "<external>"
       pod CIDR 10.244.1.0/24, fd00:10:244:1::/64          routes 10.244.N.0/24 -> node N,
       |  vethN (10.244.1.1/32, fd00:10:244:1::1/128,       service CIDR -> "node"
       |         fe80::1) -- one veth pair per pod
       eth0 in ns "<pod>": 10.244.1.5/32, fd00:10:244:1::5/128,
                           default via 10.244.1.1 / fe80::1

* Pods are "ptp"-routed like kindnet/Calico: a /32 (/128) address and a default route via
  the node-side gateway, and the node has a /32 route to the pod through the pod's veth.
  So pod->pod on the same node, hairpin (pod -> ClusterIP -> itself) and cross-node traffic
  all go through the node's IP stack (PREROUTING, FORWARD, POSTROUTING, conntrack).
* Node-side veths of node N all carry the gateway 10.244.N.1/32 (and fd00:10:244:N::1/128),
  as the CNI ptp plugin does, so MASQUERADE toward a local pod gives 10.244.N.1, toward a
  pod on another node (out eth0) the node's uplink address.
* The node has a route for the service CIDRs (10.96.0.0/12, fd00:10:96::/64) on eth0, so a
  host-network client picks its uplink address as source (as with a default route on kind).
* Node N has routes to every other node's pod CIDR via that node's uplink address. External
  clients route each pod CIDR to its node and the service CIDRs to ``via`` (default "node").
* Sysctls: forwarding on (v4+v6) on nodes; rp_filter=0, accept_dad=0, no ICMP redirects
  everywhere; br_netfilter's bridge-nf-call-* off in the uplink namespace.

Namespace names are ``kc-<pid>-<name>`` (``lab.ns(name)``); logical names are "node",
"node2", ..., "uplink", pod names and external names. Stale ``kc-<pid>-*`` namespaces whose
pid is dead are removed when a Lab starts. Everything (servers, namespaces) is removed on
exit, also on exceptions, Ctrl-C and SIGTERM (turned into KeyboardInterrupt while a Lab is
open, if no other SIGTERM handler is installed), with atexit as a last resort.

API (all rule/state helpers act on namespace `node` unless node=... is given)::

    with Lab(nodes=1, ipv6=True) as lab:      # uplink + "node" (+ "node2".. if nodes>1)
        lab.add_node("node2")                   # -> Node: 172.18.0.4, pods 10.244.2.0/24
        lab.add_pod("a", "10.244.1.5", ipv6=True, node="node")   # -> Pod (ipv6=True derives
                                                # fd00:10:244:1::5; ip=None picks the next free)
        lab.add_bridge_pod("p", "10.244.1.5", node="node")  # on bridge cni0 (/24), not ptp
        lab.add_external("ext", "172.18.0.3", ipv6=True, via="node")  # -> External
        lab.ns("a")                             # real namespace name "kc-<pid>-a"
        lab.ip_of("a", 6)                       # address of a pod / node (uplink) / external
        lab.run("a", "ip", "-br", "addr")       # stdout; LabError on failure (check=True)
        lab.run_proc(...)                       # same, full CompletedProcess
        lab.sysctl("node", {"net.ipv4.conf.all.rp_filter": "1"})
        lab.load_iptables(text, family=4, backend="nft"|"legacy", noflush=False)
        lab.iptables("-t", "nat", "-A", ..., family=4, backend="nft")  # one command
        lab.load_nft(text)                      # nft -f -
        lab.reset_rules()                       # nft flush ruleset + flush legacy tables
        lab.iptables_save(4, backend="nft", table=None, counters=False)  # text
        lab.nft_json(); lab.nft_text()          # nft -j list ruleset / nft list ruleset
        lab.conntrack(4, "tcp"); lab.conntrack_flush()   # raw conntrack -L text / conntrack -F
        lab.ip_addr_json(); lab.ip_route_json(4, table=None)   # raw ip -j output
        lab.serve("b", 8080, "tcp", name=None, lifetime=60, bind=None)   # -> Server
        lab.request("a", "10.96.0.10", 80, "tcp", count=20, source_port=None, timeout=1.0,
                    source_ip=None)             # -> list[Reply], sequential, bounded
    tally(replies)                              # {"b": 12, "c": 8, "error:timeout": 0..}
    parse_conntrack(text); find_conntrack(entries, dst=..., reply_src=...)
    require_root_tools("nft", "conntrack")      # skip reason or None; kernel_lab(...) marker
    sweep_stale_namespaces()                    # done by every Lab start

Servers answer each TCP connection / UDP datagram with one line "<name> <peer_ip> <peer_port>"
(the peer they saw, after any NAT), listen on 0.0.0.0 and :: unless `bind` is given, and exit
by themselves after `lifetime` seconds. Requests are sequential, each a new connection
(TCP) or a new socket (UDP; with a fixed ``source_port`` repeated UDP requests reuse one
conntrack entry, as in the kernel; TCP reopens from TIME_WAIT and is NATed afresh). Errors:
"refused" (RST or ICMP port unreachable, e.g. REJECT), "unreachable" (ICMP host/net
unreachable or no route; TCP only: UDP sockets ignore those ICMP types and time out),
"timeout", "reset", "denied" (EPERM: a local OUTPUT drop), "empty", or the errno name.

Kernel notes: conntrack is per-netns and only tracks in a namespace once some rule needs it
(NAT target, ctstate match, ct expression); an empty nat table is not enough. ICMP error
rate limits are switched off in every namespace (else REJECT answers go missing after a
few). TCP clients set IP_RECVERR so an ICMP error that arrives while connect() still holds
the socket (veth delivers synchronously) is reported at once instead of after the 1 s SYN
retransmit. Rules of iptables-nft and iptables-legacy are both active in a namespace if
both are loaded; each save shows only its own (nft-save warns on stderr only).

Only one Lab may be open per process at a time.
"""

from __future__ import annotations

import atexit
import ipaddress
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

PREFIX = "kc"
CLUSTER_CIDR = "10.244.0.0/16"
CLUSTER_CIDR6 = "fd00:10:244::/56"
SERVICE_CIDR = "10.96.0.0/12"
SERVICE_CIDR6 = "fd00:10:96::/64"
UPLINK_CIDR = "172.18.0.0/16"
UPLINK_CIDR6 = "fd00:172:18::/64"
MAX_REQUESTS = 500
RUN_TIMEOUT = 10.0
SERVER_READY_TIMEOUT = 5.0
DEFAULT_SERVER_LIFETIME = 60.0

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,30}$")
_RESERVED = {"uplink", "host"}


class LabError(RuntimeError):
    """A command inside the lab failed."""


# --------------------------------------------------------------------------- skip support

_probe_cache: dict[tuple[str, ...], str | None] = {}


def require_root_tools(*tools: str) -> str | None:
    """Why kernel tests cannot run here (not root, tool missing, no netns), or None if they can.

    ``ip`` is always required; pass e.g. "iptables", "nft", "conntrack" for more.
    """
    key = tuple(sorted(set(tools)))
    if key in _probe_cache:
        return _probe_cache[key]
    reason = _probe(key)
    _probe_cache[key] = reason
    return reason


def _probe(tools: Sequence[str]) -> str | None:
    if not sys.platform.startswith("linux"):
        return "kernel lab needs Linux network namespaces"
    if os.geteuid() != 0:
        return "kernel lab needs root (network namespaces, iptables)"
    missing = [t for t in ("ip", *tools) if shutil.which(t) is None]
    if missing:
        return f"kernel lab needs tools not found on PATH: {', '.join(missing)}"
    name = f"{PREFIX}-{os.getpid()}-probe"
    try:
        r = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True,
                           timeout=RUN_TIMEOUT)
        if r.returncode != 0:
            return f"cannot create network namespaces: {r.stderr.strip()}"
        r = subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"],
                           capture_output=True, text=True, timeout=RUN_TIMEOUT)
        if r.returncode != 0:
            return f"cannot enter network namespaces: {r.stderr.strip()}"
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"cannot create network namespaces: {e}"
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=RUN_TIMEOUT)
    return None


def kernel_lab(*tools: str) -> Any:
    """A ``pytest.mark.skipif`` marker that skips unless :func:`require_root_tools` is happy."""
    import pytest

    reason = require_root_tools(*tools)
    return pytest.mark.skipif(reason is not None, reason=reason or "")


# --------------------------------------------------------------------------- data types

@dataclass
class Node:
    name: str
    ns: str
    index: int
    ip: str
    ipv6: str | None
    pod_cidr: str
    pod_cidr6: str
    gateway: str          # 10.244.N.1, on every pod veth of this node
    gateway6: str         # fd00:10:244:N::1
    uplink_port: str      # the bridge port in the uplink namespace


@dataclass
class Pod:
    name: str
    ns: str
    node: str
    ip: str
    ipv6: str | None
    iface: str            # node-side veth name (the pod side is always eth0)


@dataclass
class External:
    name: str
    ns: str
    ip: str
    ipv6: str | None
    via: str              # node that routes the service CIDRs for this client
    uplink_port: str


@dataclass(frozen=True)
class Reply:
    """One request's outcome. ``server``/``peer_*`` are what the answering server saw."""

    ok: bool
    server: str | None = None
    peer_ip: str | None = None
    peer_port: int | None = None
    error: str | None = None
    local_ip: str | None = None      # the client's socket address (pre-NAT source)
    local_port: int | None = None
    line: str = ""


@dataclass
class Server:
    name: str
    where: str
    port: int
    proto: str
    proc: subprocess.Popen[str]
    log: str

    def stop(self) -> None:
        _kill(self.proc)

    def alive(self) -> bool:
        return self.proc.poll() is None


def tally(replies: Iterable[Reply]) -> dict[str, int]:
    """Count replies by server name; failures count under ``"error:<kind>"``."""
    out: dict[str, int] = {}
    for r in replies:
        key = r.server if r.ok and r.server else f"error:{r.error}"
        out[key] = out.get(key, 0) + 1
    return out


# --------------------------------------------------------------------------- helper scripts

_SERVER_CODE = r"""
import json, select, socket, struct, sys, time
a = json.loads(sys.argv[1])
name, port, tcp = a["name"], a["port"], a["proto"] == "tcp"
deadline = time.monotonic() + a["lifetime"]
socks = []
for fam, addr in ((socket.AF_INET, a["bind4"]), (socket.AF_INET6, a["bind6"])):
    if addr is None:
        continue
    try:
        s = socket.socket(fam, socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM)
    except OSError:
        continue
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if fam == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    if not tcp:
        if fam == socket.AF_INET:
            s.setsockopt(socket.IPPROTO_IP, 8, 1)  # IP_PKTINFO
        else:
            s.setsockopt(socket.IPPROTO_IPV6, 49, 1)  # IPV6_RECVPKTINFO
    try:
        s.bind((addr, port))
    except OSError:
        if fam == socket.AF_INET6 and a["bind6"] == "::" and a["bind4"] is not None:
            s.close()
            continue
        raise
    if tcp:
        s.listen(128)
    s.setblocking(False)
    socks.append(s)
print("READY", flush=True)
def line(peer):
    ip = peer[0]
    if ip.startswith("::ffff:") and "." in ip:
        ip = ip[7:]
    return ("%s %s %d\n" % (name, ip, peer[1])).encode()
served = 0
while served < a["max"]:
    left = deadline - time.monotonic()
    if left <= 0:
        break
    ready, _, _ = select.select(socks, [], [], min(left, 0.5))
    for s in ready:
        try:
            if tcp:
                c, peer = s.accept()
                try:
                    c.settimeout(1.0)
                    c.sendall(line(peer))
                finally:
                    c.close()
            else:
                data, anc, _flags, peer = s.recvmsg(4096, 256)
                cmsg = []
                for lvl, typ, d in anc:
                    if lvl == socket.IPPROTO_IP and typ == 8 and len(d) >= 12:
                        cmsg = [(lvl, 8, struct.pack("=i4s4s", 0, d[8:12], bytes(4)))]
                    elif lvl == socket.IPPROTO_IPV6 and typ == 50 and len(d) >= 20:
                        cmsg = [(lvl, 50, d[:16] + struct.pack("=I", 0))]
                s.sendmsg([line(peer)], cmsg, 0, peer)
        except OSError as e:
            print("error: %r" % (e,), file=sys.stderr, flush=True)
            continue
        served += 1
"""

_CLIENT_CODE = r"""
import errno, json, os, select, socket, sys, time
a = json.loads(sys.argv[1])
ip, port, tcp, timeout = a["ip"], a["port"], a["proto"] == "tcp", a["timeout"]
sport, sip = a["source_port"], a["source_ip"]
fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
NAMES = {errno.ECONNREFUSED: "refused", errno.EHOSTUNREACH: "unreachable",
         errno.ENETUNREACH: "unreachable", errno.ECONNRESET: "reset",
         errno.ETIMEDOUT: "timeout", errno.EPERM: "denied", errno.EACCES: "denied"}
RECVERR = (0, 11) if fam == socket.AF_INET else (41, 25)  # IP_RECVERR / IPV6_RECVERR


def errqueue(s):
    # errno of an ICMP error queued on the socket (IP_RECVERR), else 0. When the ICMP
    # answer to a SYN comes back while connect() still holds the socket lock (veth delivers
    # synchronously), TCP keeps it only as a soft error until the SYN is retransmitted
    # ~1 s later; the error queue has it at once.
    try:
        _, anc, _, _ = s.recvmsg(1, 512, 0x2000 | socket.MSG_DONTWAIT)  # MSG_ERRQUEUE
    except OSError:
        return 0
    for lvl, typ, data in anc:
        if (lvl, typ) == RECVERR and len(data) >= 4:
            return int.from_bytes(data[:4], sys.byteorder)
    return 0


out = []
for _ in range(a["count"]):
    r = {"line": "", "error": None, "local_ip": None, "local_port": None}
    s = socket.socket(fam, socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM)
    end = time.monotonic() + timeout
    try:
        if sport or sip:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((sip or ("::" if fam == socket.AF_INET6 else "0.0.0.0"), sport or 0))
        if tcp:
            s.setsockopt(RECVERR[0], RECVERR[1], 1)
            s.setblocking(False)
            rc = s.connect_ex((ip, port))
            try:
                r["local_ip"], r["local_port"] = s.getsockname()[:2]
            except OSError:
                pass
            if rc not in (0, errno.EINPROGRESS):
                raise OSError(rc, os.strerror(rc))
            while rc:
                _, w, _ = select.select([], [s], [], max(end - time.monotonic(), 0))
                if not w:
                    raise TimeoutError()
                err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) or errqueue(s)
                if err:
                    raise OSError(err, os.strerror(err))
                try:
                    s.getpeername()
                    rc = 0
                except OSError:
                    time.sleep(0.005)
            s.setblocking(True)
            data = b""
            while b"\n" not in data and len(data) < 4096:
                s.settimeout(max(end - time.monotonic(), 0.05))
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        else:
            s.connect((ip, port))
            r["local_ip"], r["local_port"] = s.getsockname()[:2]
            s.settimeout(timeout)
            try:
                s.send(b"ping\n")
            except PermissionError:
                # a REJECT in OUTPUT drops the datagram (EPERM) and queues the ICMP error
                s.settimeout(min(timeout, 0.2))
                try:
                    s.recv(4096)
                except ConnectionRefusedError:
                    raise
                except OSError:
                    pass
                raise
            data = s.recv(4096)
        r["line"] = data.decode(errors="replace").strip()
        if not r["line"]:
            r["error"] = "empty"
    except (TimeoutError, socket.timeout):
        r["error"] = "timeout"
    except OSError as e:
        r["error"] = NAMES.get(e.errno) or errno.errorcode.get(e.errno, str(e)).lower()
    finally:
        s.close()
    out.append(r)
print(json.dumps(out))
"""


# --------------------------------------------------------------------------- the lab

_open_labs: list[Lab] = []
_lock = threading.Lock()


def kernel_round_trip(text: str, load: Sequence[str], *dumps: Sequence[str]) -> list[str]:
    """What each of `dumps` prints after `load` reads `text` in a throwaway namespace: the
    kernel's own normalised form of a ruleset (needs root; the namespace is always removed)."""
    ns = f"kc-{os.getpid()}-roundtrip"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        inside = ["ip", "netns", "exec", ns]
        subprocess.run([*inside, *load], input=text, text=True, check=True)
        return [subprocess.run([*inside, *d], text=True, check=True, capture_output=True).stdout
                for d in dumps]
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def _kill(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        try:
            proc.kill()
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass
    for stream in (proc.stdout, proc.stderr, proc.stdin):
        if stream is not None:
            stream.close()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _netns_list() -> list[str]:
    r = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                       timeout=RUN_TIMEOUT)
    return [line.split()[0] for line in r.stdout.splitlines() if line.strip()]


def sweep_stale_namespaces() -> list[str]:
    """Delete ``kc-<pid>-*`` namespaces left by dead processes (or by this one). Returns them."""
    own = os.getpid()
    removed = []
    for name in _netns_list():
        m = re.match(rf"^{PREFIX}-(\d+)-", name)
        if not m:
            continue
        pid = int(m.group(1))
        if pid == own:
            if any(lab.prefix == f"{PREFIX}-{own}-" for lab in _open_labs):
                continue
        elif _pid_alive(pid):
            continue
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=RUN_TIMEOUT)
        removed.append(name)
    return removed


def _host_part(ip: str) -> str:
    """Last IPv4 octet as text (10.244.1.5 -> "5"), reused as the IPv6 interface id."""
    return ip.rsplit(".", 1)[1]


class Lab:
    """Build and tear down one "cluster" of namespaces; see the module docstring."""

    def __init__(self, *, nodes: int = 1, ipv6: bool = True,
                 run_timeout: float = RUN_TIMEOUT) -> None:
        if not 1 <= nodes <= 9:
            raise ValueError("nodes must be 1..9")
        self.prefix = f"{PREFIX}-{os.getpid()}-"
        self.ipv6 = ipv6 and os.path.isdir("/proc/sys/net/ipv6")
        self.run_timeout = run_timeout
        self.nodes: dict[str, Node] = {}
        self.pods: dict[str, Pod] = {}
        self.externals: dict[str, External] = {}
        self.servers: list[Server] = []
        self._want_nodes = nodes
        self._namespaces: list[str] = []    # real names, creation order
        self._ifindex = 0
        self._tmp: str | None = None
        self._started = False
        self._closed = False
        self._old_sigterm: Any = None
        self._sigterm_installed = False

    # ---- lifecycle

    def __enter__(self) -> Lab:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> Lab:
        if self._started:
            return self
        with _lock:
            if _open_labs:
                raise LabError("only one Lab may be open per process")
            _open_labs.append(self)
        self._started = True
        try:
            self._install_sigterm()
            sweep_stale_namespaces()
            self._tmp = tempfile.mkdtemp(prefix=self.prefix)
            self._create_ns("uplink", self._uplink_sysctls())
            self._ip("uplink", "link add br0 type bridge mcast_snooping 0",
                     "link set br0 up")
            self.add_node("node")
            for i in range(2, self._want_nodes + 1):
                self.add_node(f"node{i}")
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Kill our servers, delete our namespaces and temp dir. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            for srv in self.servers:
                _kill(srv.proc)
            for real in reversed(self._namespaces):
                subprocess.run(["ip", "netns", "del", real], capture_output=True,
                               timeout=RUN_TIMEOUT)
            # anything with our prefix that we lost track of (e.g. interrupted mid-create)
            for real in _netns_list():
                if real.startswith(self.prefix):
                    subprocess.run(["ip", "netns", "del", real], capture_output=True,
                                   timeout=RUN_TIMEOUT)
            if self._tmp:
                shutil.rmtree(self._tmp, ignore_errors=True)
        finally:
            self._restore_sigterm()
            with _lock:
                if self in _open_labs:
                    _open_labs.remove(self)

    def _install_sigterm(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return

        def handler(signum: int, frame: object) -> None:
            raise KeyboardInterrupt("SIGTERM")

        self._old_sigterm = signal.signal(signal.SIGTERM, handler)
        self._sigterm_installed = True

    def _restore_sigterm(self) -> None:
        if self._sigterm_installed and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._old_sigterm)
            self._sigterm_installed = False

    # ---- names and commands

    def ns(self, name: str) -> str:
        """The real namespace name of a logical name ("node", "uplink", a pod, an external)."""
        real = self.prefix + name
        if real not in self._namespaces:
            raise KeyError(f"no namespace {name!r} in this lab")
        return real

    def _check(self) -> None:
        if not self._started or self._closed:
            raise LabError("lab is not open (use `with Lab() as lab:`)")

    def run_proc(self, name: str, *argv: str, input: str | None = None, check: bool = True,
                 timeout: float | None = None) -> subprocess.CompletedProcess[str]:
        """Run argv inside namespace `name` (ip netns exec); the full CompletedProcess."""
        self._check()
        cmd = ["ip", "netns", "exec", self.ns(name), *argv]
        try:
            r = subprocess.run(cmd, input=input, capture_output=True, text=True,
                               timeout=timeout or self.run_timeout)
        except subprocess.TimeoutExpired as e:
            raise LabError(f"timeout after {e.timeout}s in {name}: {' '.join(argv)}") from e
        if check and r.returncode != 0:
            raise LabError(f"in {name}: {' '.join(argv)} -> rc={r.returncode}\n"
                           f"{r.stderr.strip()}\n{r.stdout.strip()}".rstrip())
        return r

    def run(self, name: str, *argv: str, input: str | None = None, check: bool = True,
            timeout: float | None = None) -> str:
        """Run argv inside namespace `name`; return stdout (raise LabError if check fails)."""
        return self.run_proc(name, *argv, input=input, check=check, timeout=timeout).stdout

    def _ip(self, name: str, *lines: str) -> None:
        """Run `ip` commands in a namespace in one batch (ip -n NS -batch -)."""
        real = self.ns(name)
        r = subprocess.run(["ip", "-n", real, "-batch", "-"], input="\n".join(lines) + "\n",
                           capture_output=True, text=True, timeout=self.run_timeout)
        if r.returncode != 0:
            raise LabError(f"ip -n {name}: {r.stderr.strip()}\n" + "\n".join(lines))

    def _create_ns(self, name: str, sysctls: dict[str, str]) -> str:
        if not _NAME_RE.match(name):
            raise ValueError(f"bad name {name!r}: use [a-z0-9-], max 31 chars")
        real = self.prefix + name
        if real in self._namespaces:
            raise ValueError(f"name {name!r} already used in this lab")
        r = subprocess.run(["ip", "netns", "add", real], capture_output=True, text=True,
                           timeout=self.run_timeout)
        if r.returncode != 0:
            raise LabError(f"ip netns add {real}: {r.stderr.strip()}")
        self._namespaces.append(real)
        self._ip(name, "link set lo up")
        self.sysctl(name, sysctls)
        return real

    def sysctl(self, name: str, values: dict[str, str]) -> None:
        """Set sysctls inside a namespace (unknown keys are ignored: sysctl -e)."""
        if values:
            self.run(name, "sysctl", "-q", "-e", "-w",
                     *[f"{k}={v}" for k, v in values.items()])

    def _base_sysctls(self) -> dict[str, str]:
        s = {
            # ICMP errors (REJECT, port unreachable) must not be rate limited per peer
            "net.ipv4.icmp_ratelimit": "0",
            "net.ipv4.icmp_msgs_per_sec": "100000",
            "net.ipv4.icmp_msgs_burst": "100000",
            "net.ipv4.conf.all.rp_filter": "0",
            "net.ipv4.conf.default.rp_filter": "0",
            "net.ipv4.conf.all.accept_redirects": "0",
            "net.ipv4.conf.default.accept_redirects": "0",
            "net.ipv4.conf.all.send_redirects": "0",
            "net.ipv4.conf.default.send_redirects": "0",
        }
        if self.ipv6:
            s |= {
                "net.ipv6.icmp.ratelimit": "0",
                "net.ipv6.conf.all.accept_dad": "0",
                "net.ipv6.conf.default.accept_dad": "0",
                "net.ipv6.conf.all.accept_redirects": "0",
                "net.ipv6.conf.default.accept_redirects": "0",
                "net.ipv6.conf.all.accept_ra": "0",
                "net.ipv6.conf.default.accept_ra": "0",
            }
        else:
            s["net.ipv6.conf.all.disable_ipv6"] = "1"
            s["net.ipv6.conf.default.disable_ipv6"] = "1"
        return s

    def _uplink_sysctls(self) -> dict[str, str]:
        return self._base_sysctls() | {
            "net.bridge.bridge-nf-call-iptables": "0",
            "net.bridge.bridge-nf-call-ip6tables": "0",
            "net.bridge.bridge-nf-call-arptables": "0",
        }

    def _next_ifname(self, stem: str) -> str:
        self._ifindex += 1
        return f"{stem}{self._ifindex}"

    # ---- topology

    def add_node(self, name: str, *, index: int | None = None, ip: str | None = None,
                 ipv6: str | None = None) -> Node:
        """A node namespace on the uplink: pod CIDR 10.244.<index>.0/24, eth0 172.18.0.<2*index>."""
        self._check()
        if name in _RESERVED:
            raise ValueError(f"{name!r} is reserved")
        index = index or len(self.nodes) + 1
        if any(n.index == index for n in self.nodes.values()):
            raise ValueError(f"node index {index} already used")
        if not 1 <= index <= 99:
            raise ValueError("node index must be 1..99")
        ip = ip or f"172.18.0.{2 * index}"
        if self.ipv6:
            ipv6 = ipv6 or f"fd00:172:18::{2 * index}"
        else:
            ipv6 = None
        node = Node(name=name, ns=self.prefix + name, index=index, ip=ip, ipv6=ipv6,
                    pod_cidr=f"10.244.{index}.0/24", pod_cidr6=f"fd00:10:244:{index}::/64",
                    gateway=f"10.244.{index}.1", gateway6=f"fd00:10:244:{index}::1",
                    uplink_port=self._next_ifname("up"))
        sysctls = self._base_sysctls() | {"net.ipv4.ip_forward": "1",
                                          "net.ipv4.conf.all.forwarding": "1"}
        if self.ipv6:
            sysctls["net.ipv6.conf.all.forwarding"] = "1"
        self._create_ns(name, sysctls)
        self._attach_uplink(name, node.uplink_port, ip, ipv6)
        lines = [f"route add {SERVICE_CIDR} dev eth0 src {ip}"]
        if ipv6:
            lines.append(f"route add {SERVICE_CIDR6} dev eth0 src {ipv6}")
        self._ip(name, *lines)
        # routes between this node and the others, and from externals to this node's pods
        for other in self.nodes.values():
            self._ip(name, *self._pod_cidr_routes(other))
            self._ip(other.name, *self._pod_cidr_routes(node))
        for ext in self.externals.values():
            self._ip(ext.name, *self._pod_cidr_routes(node))
        self.nodes[name] = node
        return node

    def _pod_cidr_routes(self, node: Node) -> list[str]:
        lines = [f"route add {node.pod_cidr} via {node.ip}"]
        if node.ipv6:
            lines.append(f"route add {node.pod_cidr6} via {node.ipv6}")
        return lines

    def _attach_uplink(self, name: str, port: str, ip: str, ipv6: str | None) -> None:
        real = self.ns(name)
        prefix = UPLINK_CIDR.split("/")[1]
        self._ip("uplink", f"link add {port} type veth peer name eth0 netns {real}",
                 f"link set {port} master br0", f"link set {port} up")
        lines = [f"addr add {ip}/{prefix} dev eth0", "link set eth0 up"]
        if ipv6:
            lines.insert(1, f"addr add {ipv6}/64 dev eth0 nodad")
        self._ip(name, *lines)

    def add_pod(self, name: str, ip: str | None = None, ipv6: str | bool | None = None,
                node: str = "node") -> Pod:
        """A pod namespace on `node`: eth0 with ip/32 (and ipv6/128), default via the node.

        ip=None picks the next free 10.244.<n>.<10+k>; ipv6=True derives fd00:10:244:<n>::<h>
        from the IPv4 host part (10.244.1.5 -> fd00:10:244:1::5).
        """
        self._check()
        if name in _RESERVED or name in self.nodes:
            raise ValueError(f"{name!r} is reserved or a node name")
        n = self.nodes[node]
        if ip is None:
            used = {p.ip for p in self.pods.values()}
            ip = next(f"10.244.{n.index}.{h}" for h in range(10, 250)
                      if f"10.244.{n.index}.{h}" not in used)
        ipaddress.IPv4Address(ip)
        if ipv6 is True:
            ipv6 = f"fd00:10:244:{n.index}::{_host_part(ip)}"
        elif ipv6 is False:
            ipv6 = None
        if ipv6 is not None:
            if not self.ipv6:
                raise LabError("IPv6 is disabled in this lab")
            ipaddress.IPv6Address(ipv6)
        iface = self._next_ifname("veth")
        real = self._create_ns(name, self._base_sysctls())
        self._ip(node, f"link add {iface} type veth peer name eth0 netns {real}",
                 f"addr add {n.gateway}/32 dev {iface}",
                 *([f"addr add {n.gateway6}/128 dev {iface} nodad",
                    f"addr add fe80::1/64 dev {iface} nodad"] if self.ipv6 else []),
                 f"link set {iface} up",
                 f"route add {ip}/32 dev {iface} src {n.gateway}",
                 *([f"route add {ipv6}/128 dev {iface}"] if ipv6 else []))
        self.sysctl(node, {f"net.ipv4.conf.{iface}.rp_filter": "0"})
        lines = [f"addr add {ip}/32 dev eth0", "link set eth0 up",
                 f"route add {n.gateway} dev eth0 scope link",
                 f"route add default via {n.gateway} dev eth0 src {ip}"]
        if ipv6:
            lines += [f"addr add {ipv6}/128 dev eth0 nodad",
                      f"route add ::/0 via fe80::1 dev eth0 src {ipv6}"]
        self._ip(name, *lines)
        pod = Pod(name=name, ns=real, node=node, ip=ip, ipv6=ipv6, iface=iface)
        self.pods[name] = pod
        return pod

    def add_bridge_pod(self, name: str, ip: str, node: str = "node",
                       bridge: str = "cni0") -> Pod:
        """A pod on the node's Linux bridge, as the `bridge` CNI plugin (flannel, kubenet)
        makes it: eth0 with ip/24 in the node's pod CIDR, default via the bridge's address
        10.244.N.1/24. Pods of one bridge reach each other at layer 2, so a reply between
        them is bridged, not routed (br_netfilter decides whether iptables sees it). Do not
        mix with add_pod on the same node (ptp veths carry the same gateway address)."""
        self._check()
        n = self.nodes[node]
        ipaddress.IPv4Address(ip)
        if self.run_proc(node, "ip", "link", "show", bridge, check=False).returncode != 0:
            self._ip(node, f"link add {bridge} type bridge", f"addr add {n.gateway}/24 dev "
                     f"{bridge}", f"link set {bridge} up")
        iface = self._next_ifname("veth")
        real = self._create_ns(name, self._base_sysctls())
        self._ip(node, f"link add {iface} type veth peer name eth0 netns {real}",
                 f"link set {iface} master {bridge}", f"link set {iface} up")
        self._ip(name, f"addr add {ip}/24 dev eth0", "link set eth0 up",
                 f"route add default via {n.gateway} dev eth0 src {ip}")
        pod = Pod(name=name, ns=real, node=node, ip=ip, ipv6=None, iface=iface)
        self.pods[name] = pod
        return pod

    def add_external(self, name: str, ip: str | None = None, ipv6: str | bool | None = None,
                     via: str = "node") -> External:
        """An off-cluster client on the uplink (default 172.18.0.3, .5, ...).

        It routes each node's pod CIDR to that node and the service CIDRs to `via`.
        ipv6=True derives fd00:172:18::<h> from the IPv4 host part.
        """
        self._check()
        if name in _RESERVED or name in self.nodes:
            raise ValueError(f"{name!r} is reserved or a node name")
        gw = self.nodes[via]
        if ip is None:
            used = {e.ip for e in self.externals.values()}
            ip = next(f"172.18.0.{h}" for h in range(3, 250, 2) if f"172.18.0.{h}" not in used)
        ipaddress.IPv4Address(ip)
        if ipv6 is True:
            ipv6 = f"fd00:172:18::{_host_part(ip)}"
        elif ipv6 is False:
            ipv6 = None
        if ipv6 is not None and not self.ipv6:
            raise LabError("IPv6 is disabled in this lab")
        port = self._next_ifname("up")
        real = self._create_ns(name, self._base_sysctls())
        self._attach_uplink(name, port, ip, ipv6)
        lines = [f"route add {SERVICE_CIDR} via {gw.ip}"]
        if ipv6 and gw.ipv6:
            lines.append(f"route add {SERVICE_CIDR6} via {gw.ipv6}")
        for n in self.nodes.values():
            lines += [x for x in self._pod_cidr_routes(n) if ipv6 or ":" not in x]
        self._ip(name, *lines)
        ext = External(name=name, ns=real, ip=ip, ipv6=ipv6, via=via, uplink_port=port)
        self.externals[name] = ext
        return ext

    def ip_of(self, name: str, family: int = 4) -> str:
        """The address of a pod, node (uplink address) or external for the given family."""
        obj: Pod | Node | External | None = (self.pods.get(name) or self.nodes.get(name)
                                             or self.externals.get(name))
        if obj is None:
            raise KeyError(name)
        addr = obj.ip if family == 4 else obj.ipv6
        if addr is None:
            raise LabError(f"{name} has no IPv{family} address")
        return addr

    # ---- rules and kernel state (node namespaces)

    def load_iptables(self, text: str, family: int = 4, backend: str = "nft",
                      node: str = "node", noflush: bool = False) -> None:
        """iptables-restore (ip6tables-restore for family 6) of `text` into the node."""
        binary = self._xt(family, backend, "restore")
        args = [binary, "-w", "5"]
        if noflush:
            args.append("--noflush")
        self.run(node, *args, input=text)

    def iptables_save(self, family: int = 4, backend: str = "nft", node: str = "node",
                      table: str | None = None, counters: bool = False) -> str:
        """iptables-save (ip6tables-save) output from the node; `counters` adds -c."""
        args = [self._xt(family, backend, "save")]
        if counters:
            args.append("-c")
        if table:
            args += ["-t", table]
        return self.run(node, *args)

    @staticmethod
    def _xt(family: int, backend: str, what: str) -> str:
        if family not in (4, 6) or backend not in ("nft", "legacy"):
            raise ValueError("family must be 4 or 6, backend 'nft' or 'legacy'")
        return f"{'ip' if family == 4 else 'ip6'}tables-{backend}-{what}"

    def iptables(self, *args: str, family: int = 4, backend: str = "nft",
                 node: str = "node") -> str:
        """Run one iptables/ip6tables command (e.g. "-t", "nat", "-A", ...) in the node."""
        binary = f"{'ip' if family == 4 else 'ip6'}tables-{backend}"
        return self.run(node, binary, "-w", "5", *args)

    def load_nft(self, text: str, node: str = "node") -> None:
        """nft -f - of `text` into the node."""
        self.run(node, "nft", "-f", "-", input=text)

    def nft_json(self, node: str = "node") -> str:
        return self.run(node, "nft", "-j", "list", "ruleset")

    def nft_text(self, node: str = "node") -> str:
        return self.run(node, "nft", "list", "ruleset")

    def reset_rules(self, node: str = "node") -> None:
        """Remove all nftables (incl. iptables-nft) and iptables-legacy rules from the node."""
        self.run(node, "nft", "flush", "ruleset")
        for fam in (4, 6):
            binary = f"{'ip' if fam == 4 else 'ip6'}tables-legacy"
            if shutil.which(binary + "-save") is None:
                continue
            saved = self.run(node, binary + "-save", check=False)
            for table in re.findall(r"^\*(\w+)", saved, re.M):
                self.run(node, binary, "-w", "5", "-t", table, "-F")
                self.run(node, binary, "-w", "5", "-t", table, "-X")

    def conntrack(self, family: int = 4, proto: str | None = None, node: str = "node") -> str:
        """Raw `conntrack -L` text of the node's conntrack table (per-netns)."""
        args = ["conntrack", "-L", "-f", "ipv4" if family == 4 else "ipv6"]
        if proto:
            args += ["-p", proto]
        return self.run(node, *args)

    def conntrack_flush(self, node: str = "node") -> None:
        self.run(node, "conntrack", "-F")

    def ip_addr_json(self, node: str = "node") -> str:
        return self.run(node, "ip", "-j", "addr", "show")

    def ip_route_json(self, family: int = 4, node: str = "node",
                      table: str | None = None) -> str:
        args = ["ip", "-j", f"-{family}", "route", "show"]
        if table:
            args += ["table", table]
        return self.run(node, *args)

    # ---- traffic

    def serve(self, where: str, port: int, proto: str = "tcp", name: str | None = None,
              lifetime: float = DEFAULT_SERVER_LIFETIME, bind: str | None = None,
              max_requests: int = 100_000) -> Server:
        """Start a server in namespace `where` answering "<name> <peer_ip> <peer_port>".

        Listens on 0.0.0.0 and :: (or only `bind`); returns once listening. It exits by
        itself after `lifetime` seconds or `max_requests` answers and is killed at lab exit.
        UDP replies are sent from the address the datagram was sent to.
        """
        self._check()
        if proto not in ("tcp", "udp"):
            raise ValueError("proto must be tcp or udp")
        if not 0 < lifetime <= 600:
            raise ValueError("lifetime must be in (0, 600] seconds")
        name = name or where
        if bind is None:
            bind4, bind6 = "0.0.0.0", ("::" if self.ipv6 else None)
        elif ":" in bind:
            bind4, bind6 = None, bind
        else:
            bind4, bind6 = bind, None
        args = json.dumps({"name": name, "port": port, "proto": proto, "lifetime": lifetime,
                           "bind4": bind4, "bind6": bind6, "max": max_requests})
        assert self._tmp is not None
        log = os.path.join(self._tmp, f"server-{len(self.servers)}-{where}-{proto}{port}.log")
        with open(log, "w") as errf:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", self.ns(where), sys.executable, "-I", "-S", "-c",
                 _SERVER_CODE, args],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errf, text=True,
                start_new_session=True)
        srv = Server(name=name, where=where, port=port, proto=proto, proc=proc, log=log)
        self.servers.append(srv)
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], SERVER_READY_TIMEOUT)
        first = proc.stdout.readline() if ready else ""
        if first.strip() != "READY":
            _kill(proc)
            with open(log) as f:
                err = f.read().strip()
            raise LabError(f"server {name} in {where} {proto}/{port} did not start: {err}")
        return srv

    def request(self, client: str, ip: str, port: int, proto: str = "tcp", count: int = 1,
                source_port: int | None = None, timeout: float = 1.0,
                source_ip: str | None = None) -> list[Reply]:
        """`count` sequential requests from namespace `client` to ip:port, each a new flow."""
        self._check()
        if proto not in ("tcp", "udp"):
            raise ValueError("proto must be tcp or udp")
        if not 1 <= count <= MAX_REQUESTS:
            raise ValueError(f"count must be 1..{MAX_REQUESTS}")
        if not 0 < timeout <= 10:
            raise ValueError("timeout must be in (0, 10] seconds")
        args = json.dumps({"ip": ip, "port": port, "proto": proto, "count": count,
                           "timeout": timeout, "source_port": source_port,
                           "source_ip": source_ip})
        budget = count * (timeout + 0.2) + 10
        out = self.run(client, sys.executable, "-I", "-S", "-c", _CLIENT_CODE, args,
                       timeout=budget)
        replies = []
        for r in json.loads(out):
            parts = r["line"].split()
            ok = r["error"] is None and len(parts) == 3 and parts[2].isdigit()
            replies.append(Reply(
                ok=ok, server=parts[0] if ok else None, peer_ip=parts[1] if ok else None,
                peer_port=int(parts[2]) if ok else None,
                error=None if ok else (r["error"] or "garbled"),
                local_ip=r["local_ip"], local_port=r["local_port"], line=r["line"]))
        return replies


def _close_all() -> None:
    for lab in list(_open_labs):
        lab.close()


atexit.register(_close_all)


# --------------------------------------------------------------------------- conntrack parsing

_TUPLE_KEYS = {"src", "dst", "sport", "dport", "type", "code", "id", "packets", "bytes"}
_INT_KEYS = {"sport", "dport", "type", "code", "id", "packets", "bytes", "mark", "use", "zone"}


def parse_conntrack(text: str) -> list[dict[str, Any]]:
    """Parse `conntrack -L` (default or `-o extended`) / /proc/net/nf_conntrack lines.

    Each entry: family ("ipv4"/"ipv6"), proto, protonum, timeout, state (None for udp/icmp),
    original and reply tuples ({"src","dst","sport","dport"} or icmp type/code/id, ints for
    numbers), flags (e.g. ["ASSURED"]), other key=value fields (mark, use, zone, ...),
    dnat/snat booleans derived from the tuples, and raw (the line).
    """
    entries: list[dict[str, Any]] = []
    for raw in text.splitlines():
        toks = raw.split()
        if len(toks) < 3 or "flow entries" in raw or raw.startswith("conntrack v"):
            continue
        e: dict[str, Any] = {"family": None, "state": None, "flags": [], "raw": raw}
        i = 0
        if toks[0] in ("ipv4", "ipv6"):
            e["family"] = toks[0]
            i = 2
        if i + 2 >= len(toks) or not toks[i + 1].isdigit():
            continue
        e["proto"], e["protonum"] = toks[i], int(toks[i + 1])
        i += 2
        if toks[i].isdigit():
            e["timeout"] = int(toks[i])
            i += 1
        if i < len(toks) and "=" not in toks[i] and not toks[i].startswith("["):
            e["state"] = toks[i]
            i += 1
        tuples: list[dict[str, Any]] = []
        current: dict[str, Any] | None = None
        for tok in toks[i:]:
            if tok.startswith("[") and tok.endswith("]"):
                e["flags"].append(tok[1:-1])
                if len(tuples) == 2:
                    current = None
                continue
            if "=" not in tok:
                continue
            key, _, value = tok.partition("=")
            val: Any = int(value) if key in _INT_KEYS and value.isdigit() else value
            if key == "src" and len(tuples) < 2:
                current = {}
                tuples.append(current)
            if current is not None and key in _TUPLE_KEYS and key not in current:
                current[key] = val
            else:
                current = None if tuples and len(tuples) == 2 else current
                e[key] = val
        if len(tuples) != 2:
            continue
        e["original"], e["reply"] = tuples
        if e["family"] is None:
            e["family"] = "ipv6" if ":" in str(tuples[0].get("src", "")) else "ipv4"
        o, r = tuples
        e["dnat"] = (r.get("src") != o.get("dst")
                     or ("sport" in r and r.get("sport") != o.get("dport")))
        e["snat"] = (r.get("dst") != o.get("src")
                     or ("dport" in r and r.get("dport") != o.get("sport")))
        entries.append(e)
    return entries


def find_conntrack(entries: Iterable[dict[str, Any]], **match: Any) -> list[dict[str, Any]]:
    """Entries whose original tuple matches keywords (e.g. dst="10.96.0.10", dport=80).

    Keys prefixed ``reply_`` match the reply tuple; ``proto``/``state`` match the entry.
    """
    out = []
    for e in entries:
        ok = True
        for key, want in match.items():
            if key in ("proto", "state", "family"):
                got = e.get(key)
            elif key.startswith("reply_"):
                got = e["reply"].get(key[6:])
            else:
                got = e["original"].get(key)
            if got != want:
                ok = False
                break
        if ok:
            out.append(e)
    return out


__all__ = [
    "CLUSTER_CIDR", "CLUSTER_CIDR6", "SERVICE_CIDR", "SERVICE_CIDR6", "UPLINK_CIDR",
    "UPLINK_CIDR6", "External", "Lab", "LabError", "Node", "Pod", "Reply", "Server",
    "find_conntrack", "kernel_lab", "parse_conntrack", "require_root_tools",
    "sweep_stale_namespaces", "tally",
]
