"""Diagnosis: compare what kube-proxy should have written with what the node holds, and the
API's view of a Service with the request, its DNS answer and its conntrack state.

The walk (trace.py) says *what* the node does with one request; this package says *why*:
every finding names the object field or the exact rule line it rests on and the command to
run next. One module per step of the path (service, rules, dns, endpoints for DNAT,
conntrack); `assemble` runs them for each trace. Everything is pure over a Snapshot and the
traces; `apply` only attaches the results to the traces.
"""

from kubectl_clusterip.diagnose.assemble import apply, diagnose_trace
from kubectl_clusterip.diagnose.rules import dataplanes_without_proxy
from kubectl_clusterip.diagnose.service import port_mismatch, service_not_found

__all__ = ["apply", "dataplanes_without_proxy", "diagnose_trace", "port_mismatch",
           "service_not_found"]
