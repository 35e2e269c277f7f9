"""The probe's shell script and its two pods: the probe (client side) and the watcher (node).

The probe runs POSIX sh with the debug image's own tools (nc, dig, getent, date): no
python. Each connection uses its own source port (BASE+i), so the node's conntrack event
for it is found exactly; connections are paced (PACE seconds apart) and bounded (N <= 500,
each with a TIMEOUT). It targets only the ClusterIP:port and the endpoints' IP:targetPort
it is given. The watcher is a node debug pod running `conntrack -E -e NEW` for the
ClusterIP while the probe runs (a refused TCP connection's entry is gone within seconds,
so entries read afterwards would miss exactly the failures that matter).
"""

from __future__ import annotations

import secrets

from kubectl_clusterip.cluster import debugpod

MAX_CONNECTIONS = 500
DEFAULT_CONNECTIONS = 20
PACE = 0.05  # seconds between connections: at most 20 new connections a second
LABELS = {"app.kubernetes.io/name": "kubectl-clusterip",
          "app.kubernetes.io/component": "probe"}
MARK = debugpod.MARK

PROBE_SCRIPT = r"""
M='==== kubectl-clusterip'
T=$(mktemp -d 2>/dev/null) || T=${TMPDIR:-/tmp}  # its own: an ephemeral container shares /tmp
now() { d=$(date +%s.%N 2>/dev/null); case "$d" in *N*|'') echo -;; *) echo "$d";; esac; }
one() {  # PATH INDEX IP PORT SPORT
  t0=$(now)
  case "$METHOD" in
  connect)
    nc -z -v -n -w "$TIMEOUT" -p "$5" "$3" "$4" </dev/null >"$T/kc.out" 2>&1; rc=$?
    t1=$(now); why=
    if [ $rc = 0 ]; then o=connected
    else why=$(tail -n 1 "$T/kc.out" | cut -c1-150); case "$why" in
      *refused*) o=refused;; *"timed out"*|*"in progress"*) o=timeout;;
      *"No route"*|*nreachable*) o=unreachable;; *reset*) o=reset;; *) o=error;;
    esac; fi ;;
  dns)
    case "$3" in *:*) b="::#$5";; *) b="0.0.0.0#$5";; esac
    dig +tries=1 +time="$TIMEOUT" -b "$b" -p "$4" "@$3" "$QNAME" A >"$T/kc.out" 2>&1; rc=$?
    t1=$(now)
    st=$(sed -n 's/.*status: \([A-Z]*\).*/\1/p' "$T/kc.out" | head -n 1)
    if [ -n "$st" ]; then o=answered; why="rcode $st"
    elif grep -q refused "$T/kc.out"; then o=refused; why="ICMP port unreachable"
    elif grep -q "timed out\|no servers" "$T/kc.out"; then o=timeout; why=
    else o=error; why=$(grep -m1 ';;' "$T/kc.out" | cut -c1-150); fi ;;
  *)
    printf 'kubectl-clusterip probe\n' | nc -u -n -w 1 -p "$5" "$3" "$4" >/dev/null 2>&1
    t1=$(now); o=sent; why= ;;
  esac
  echo "CONN $1 $2 $3 $4 $5 $o $t0 $t1 $why"
}
echo "$M PROBE-BEGIN ===="
ME=$(ip -o addr show 2>/dev/null |
    awk '$2 != "lo" && $3 ~ /^inet/ { split($4, a, "/"); print a[1]; exit }')
echo "PROBE $METHOD ${ME:--}"
if [ -n "$NAME" ]; then
  echo "RESOLV-BEGIN $NAME"; cat /etc/resolv.conf 2>/dev/null; echo "RESOLV-END"
  getent hosts "$NAME" >"$T/kc.out" 2>&1; rc=$?
  echo "GETENT $NAME rc=$rc"; head -n 5 "$T/kc.out"; echo "GETENT-END"
fi
i=1
while [ "$i" -le "$N" ] && [ "$i" -le 500 ]; do
  one service "$i" "$TARGET" "$PORT" $((BASE + i))
  sleep "$PACE"
  i=$((i + 1))
done
j=1
for ep in $ENDPOINTS; do
  [ "$j" -le 100 ] || break
  ip=${ep%:*}; ip=${ip#[}; ip=${ip%]}
  one direct "$j" "$ip" "${ep##*:}" $((BASE + 500 + j))
  sleep "$PACE"
  j=$((j + 1))
done
rm -rf "$T/kc.out"; [ "$T" = "${TMPDIR:-/tmp}" ] || rmdir "$T" 2>/dev/null
echo "$M PROBE-DONE ===="
"""

WATCH_SCRIPT = r"""
M='==== kubectl-clusterip'
conntrack -E -e NEW $CT_ARGS &
sleep 0.5
echo "$M WATCHING ===="
wait
"""


def method(protocol: str, port_name: str, port: int) -> str:
    """connect (TCP), dns (UDP to a DNS port), datagram (other UDP: DNAT choice only)."""
    if protocol == "tcp":
        return "connect"
    if protocol == "udp" and (port == 53 or port_name in ("dns", "domain")):
        return "dns"
    return "datagram"


def probe_pod(namespace: str, node: str, image: str, env: dict[str, str],
              deadline: int) -> dict:
    """The probe: the node debug pod's shape (debugpod.pod_spec: pinned, never restarted,
    a deadline) made an ordinary pod on the client's node, in its namespace, with labels of
    its own (no Service selects it): no host network, restricted Pod Security."""
    pod = debugpod.pod_spec(node, image, namespace=namespace, deadline=deadline)
    pod["metadata"]["name"] = f"clusterip-probe-{secrets.token_hex(3)[:5]}"
    pod["metadata"]["labels"] = dict(LABELS)
    spec = pod["spec"]
    spec.pop("hostNetwork", None)
    spec["dnsPolicy"] = "ClusterFirst"  # the client's resolver, search path and all
    spec["securityContext"] = {"runAsNonRoot": True, "runAsUser": 65534, "runAsGroup": 65534,
                               "seccompProfile": {"type": "RuntimeDefault"}}
    c = spec["containers"][0]
    c.update({"name": "probe", "command": ["sh", "-c", PROBE_SCRIPT],
              "env": [{"name": k, "value": v} for k, v in env.items()],
              "securityContext": {"allowPrivilegeEscalation": False,
                                  "capabilities": {"drop": ["ALL"]}},
              "resources": {"requests": {"cpu": "10m", "memory": "16Mi"},
                            "limits": {"memory": "64Mi"}}})
    return pod


def probe_container(image: str, env: dict[str, str]) -> dict:
    """The probe as an ephemeral container (no resources or ports allowed there): the
    client pod's own network namespace and resolv.conf, non-root, no capabilities."""
    return {"name": f"clusterip-probe-{secrets.token_hex(3)[:5]}", "image": image,
            "imagePullPolicy": "IfNotPresent", "command": ["sh", "-c", PROBE_SCRIPT],
            "env": [{"name": k, "value": v} for k, v in env.items()],
            "securityContext": {"runAsNonRoot": True, "runAsUser": 65534,
                                "allowPrivilegeEscalation": False,
                                "capabilities": {"drop": ["ALL"]}}}


def watch_pod(node: str, image: str, ct_args: str, deadline: int,
              namespace: str = debugpod.NAMESPACE) -> dict:
    """The node debug pod (debugpod.pod_spec) running conntrack's NEW events instead of
    the dumps."""
    pod = debugpod.pod_spec(node, image, namespace=namespace, deadline=deadline)
    c = pod["spec"]["containers"][0]
    c["command"] = ["sh", "-c", WATCH_SCRIPT]
    c["env"] = [{"name": "CT_ARGS", "value": ct_args}]
    pod["metadata"]["labels"]["app.kubernetes.io/component"] = "probe-watch"
    return pod
