"""A small fake Kubernetes API server for tests: real HTTP on 127.0.0.1, the API's JSON.

It serves GET/LIST of services, endpointslices, pods, nodes, configmaps and daemonsets,
POST/DELETE of pods, pod status transitions, pods/<name>/log, and Status objects for 403
and 404, so the real client, kubeconfig loading and error handling run over a socket.
It refuses what a real kube-apiserver refuses: RBAC before existence (403), an invalid pod
name or label (422), a name taken (409), a pod that violates its namespace's enforced Pod
Security level (403 "violates PodSecurity"), the log of a container that never started
(400). Its kubelet may reject a pod (Failed, OutOfmemory) or let its deadline pass first.
The websocket upgrades of pods/<name>/exec and pods/<name>/portforward are spoken too
(tests/fakews.py) once a test says what is behind them; until then they answer 400.

    with FakeCluster() as fc:                   # listens on 127.0.0.1:<ephemeral>
        fc.add(service(...)); fc.add(pod(...))  # any object dicts (kind and metadata set)
        fc.forbid("create", "pods", "kube-system")
        fc.debug_pod = "succeed" | "pending" | "imagepull" | "fail" | "rejected" | "deadline"
                                                # or a callable: created pod -> one of those
        fc.log_for = lambda pod: "..."          # the created pod's log
        fc.kubelet = lambda pod: (argv, pod_ip) | None   # run the pod's container for real:
                                                # Running while argv runs, its output the log,
                                                # DELETE kills it (None: the scripted life)
        fc.kubelet_ephemeral = lambda pod, container: (argv, pod_ip) | None  # the same for a
                                                # PATCH of pods/NAME/ephemeralcontainers
        fc.write_kubeconfig(tmp_path / "kubeconfig")
        fc.exec_for = lambda pod, command: (0, "stdout", "stderr")  # or raise RuntimeError,
                                                # DropConnection
        fc.port_forward_to = lambda pod, port: ("127.0.0.1", 5353)   # a real TCP server
        fc.add(namespace("kube-system", enforce="baseline"))  # Pod Security Admission
        fc.requests                             # [(method, path, query), ...]
        fc.api_requests()                       # the same without pod status polling
"""

from __future__ import annotations

import json
import re
import socket
import struct
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import yaml
from fakews import OP_CLOSE, ProtocolError, ServerWebSocket, choose_protocol, handshake

PLURALS = {"services": "Service", "pods": "Pod", "nodes": "Node", "configmaps": "ConfigMap",
           "endpointslices": "EndpointSlice", "daemonsets": "DaemonSet",
           "namespaces": "Namespace", "networkpolicies": "NetworkPolicy"}
API_VERSIONS = {"EndpointSlice": "discovery.k8s.io/v1", "DaemonSet": "apps/v1",
                "NetworkPolicy": "networking.k8s.io/v1"}
# What the kubelet's websocket streams accept (remotecommand; portforward/websocket.go).
EXEC_PROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io", "v3.channel.k8s.io",
                  "v2.channel.k8s.io", "channel.k8s.io")
PORTFORWARD_PROTOCOLS = ("v4.channel.k8s.io",)
ExecResult = tuple[int, str, str]  # exit code, stdout, stderr


class DropConnection(Exception):
    """Raised by exec_for: send `stdout`, then cut the connection without a Status."""

    def __init__(self, stdout: str = "") -> None:
        super().__init__("connection dropped")
        self.stdout = stdout


def status(code: int, reason: str, message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


def matches(labels: dict, selector: str | None) -> bool:
    """Equality selectors (`a=b,c!=d`) and set selectors (`k in (a,b)`)."""
    if not selector:
        return True
    parts, depth, cur = [], 0, ""
    for ch in selector:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    for p in (x.strip() for x in parts if x.strip()):
        if " in " in p:
            k, _, vals = p.partition(" in ")
            if labels.get(k.strip()) not in [v.strip() for v in vals.strip("() ").split(",")]:
                return False
        elif "!=" in p:
            k, _, v = p.partition("!=")
            if labels.get(k) == v:
                return False
        else:
            k, _, v = p.partition("=")
            if labels.get(k.rstrip("=")) != v.lstrip("="):
                return False
    return True


class FakeCluster:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict] = {}  # (plural, ns, name) -> object
        self.requests: list[tuple[str, str, dict]] = []
        self.forbidden: set[tuple[str, str, str]] = set()
        self.debug_pod: str | Callable[[dict], str] = "succeed"
        self.log_for: Callable[[dict], str] = lambda pod: ""
        self.kubelet: Callable[[dict], tuple[list[str], str] | None] | None = None
        self.kubelet_ephemeral: Callable[[dict, dict], tuple[list[str], str] | None] | None \
            = None  # (pod, ephemeral container) -> (argv, pod_ip) to run it for real
        self._procs: dict[tuple[str, str], tuple] = {}  # (ns, name) -> (Popen, log path)
        self.polls_until_done = 2
        self.created: list[dict] = []
        self.deleted: list[str] = []
        self.exec_for: Callable[[dict, list[str]], ExecResult] | None = None
        self.port_forward_to: Callable[[dict, int], tuple[str, int]] | None = None
        self.execs: list[dict] = []  # {"pod", "container", "command", "protocol"}
        self.forwards: list[dict] = []  # {"pod", "ports", "protocol"}
        self._streams: set[socket.socket] = set()  # open websockets and upstreams
        self._polls: dict[str, int] = {}
        self._lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None

    # -- setup ------------------------------------------------------------------------
    def add(self, obj: dict) -> dict:
        plural = next(p for p, k in PLURALS.items() if k == obj["kind"])
        md = obj["metadata"]
        self.objects[(plural, md.get("namespace", ""), md["name"])] = obj
        return obj

    def forbid(self, verb: str, plural: str, namespace: str = "") -> None:
        self.forbidden.add((verb, plural, namespace))

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def write_kubeconfig(self, path: Path, namespace: str | None = None,
                         context: str = "fake") -> Path:
        ctx: dict = {"cluster": "fake", "user": "fake"}
        if namespace:
            ctx["namespace"] = namespace
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": context,
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": "t0ken"}}],
            "contexts": [{"name": context, "context": ctx}]}))
        return path

    def api_requests(self) -> list[tuple[str, str]]:
        """Requests beside polling the debug pod's status."""
        return [(m, p) for m, p, q in self.requests
                if not (m == "GET" and ("/pods/clusterip-debug-" in p or "/pods/clusterip-probe-"
                                        in p) and not p.endswith("/log"))]

    def streams_closed(self, timeout: float = 3.0) -> bool:
        """Whether every websocket (and port-forward upstream) has ended, waiting a little:
        the client closes a port-forward from its own thread."""
        import time
        deadline = time.monotonic() + timeout
        while self._streams and time.monotonic() < deadline:
            time.sleep(0.02)
        return not self._streams

    def pods_left(self) -> list[str]:
        return [n for (p, _ns, n) in self.objects if p == "pods" and n.startswith("clusterip-")]

    # -- server -----------------------------------------------------------------------
    def __enter__(self) -> FakeCluster:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _send(self, code: int, body: object, ctype: str = "application/json") -> None:
                data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self, method: str) -> None:
                u = urlparse(self.path)
                query = {k: v[0] for k, v in parse_qs(u.query).items()}
                if self.headers.get("Upgrade", "").lower() == "websocket":
                    with fake._lock:
                        fake.requests.append((method, u.path, query))
                    self.close_connection = True
                    fake.upgrade(self, u.path, parse_qs(u.query))
                    return
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"null") if length else None
                with fake._lock:
                    fake.requests.append((method, u.path, query))
                code, out = fake.route(method, u.path, query, body)
                if isinstance(out, str):
                    self._send(code, out, "text/plain")
                else:
                    self._send(code, out)

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                self._handle("POST")

            def do_DELETE(self) -> None:
                self._handle("DELETE")

            def do_PATCH(self) -> None:
                self._handle("PATCH")

        class Server(ThreadingHTTPServer):
            def handle_error(self, request: object, client_address: object) -> None:
                import sys
                if not isinstance(sys.exc_info()[1], ConnectionError):  # a client hung up
                    super().handle_error(request, client_address)

        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.server is not None
        for key in list(self._procs):
            self._stop(key)
        self.server.shutdown()
        self.server.server_close()
        with self._lock:
            streams = list(self._streams)
        for s in streams:  # wake any stream thread still reading: it ends at once
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    # -- the API ----------------------------------------------------------------------
    def route(self, method: str, path: str, query: dict, body: dict | None
              ) -> tuple[int, dict | str]:
        parts = [p for p in path.split("/") if p]
        # /api/v1/... or /apis/<group>/<version>/...
        rest = parts[2:] if parts[:1] == ["api"] else parts[3:]
        ns = ""
        if rest[:1] == ["namespaces"] and len(rest) >= 3:
            ns, rest = rest[1], rest[2:]
        if not rest or rest[0] not in PLURALS:
            return 404, status(404, "NotFound", f"the server could not find {path}")
        plural, name, sub = rest[0], (rest[1:2] or [None])[0], (rest[2:3] or [None])[0]
        if sub not in (None, "log", "ephemeralcontainers"):  # exec, portforward: websockets
            return 400, status(400, "BadRequest", f"{sub}: upgrade request required")
        verb = {"GET": "get" if name else "list", "POST": "create", "DELETE": "delete",
                "PATCH": "patch"}[method]
        if sub == "log":
            verb = "get"
        resource = f"{plural}/{sub}" if sub else plural
        if (verb, resource, ns) in self.forbidden or (verb, resource, "") in self.forbidden:
            where = f' in the namespace "{ns}"' if ns else " at the cluster scope"
            return 403, status(403, "Forbidden", f'{resource} is forbidden: User "fake" cannot '
                               f'{verb} resource "{resource}" in API group ""{where}')
        with self._lock:
            if method == "PATCH" and sub == "ephemeralcontainers":
                return self._ephemeral(ns, name or "", body or {})
            if method == "POST":
                return self._create(plural, ns, body or {})
            if method == "DELETE":
                obj = self.objects.pop((plural, ns, name or ""), None)
                if obj is None:
                    return 404, status(404, "NotFound", f'{plural} "{name}" not found')
                self.deleted.append(f"{ns}/{name}")
                for key in [k for k in self._procs if k[0] == ns and (
                        k[1] == name or k[1].startswith(f"{name}/"))]:
                    self._stop(key)
                return 200, obj
            if name is None:
                items = [o for (p, n, _), o in sorted(self.objects.items())
                         if p == plural and (not ns or n == ns)
                         and matches(o["metadata"].get("labels") or {},
                                     query.get("labelSelector"))]
                for o in items:  # the kubelets move on between two lists, as between gets
                    if (o["metadata"].get("namespace"), o["metadata"]["name"]) in self._procs:
                        self._running(o)
                    elif plural == "pods" and o["metadata"]["name"].startswith("clusterip-"):
                        self._advance(o)
                items = [{k: v for k, v in o.items() if k not in ("apiVersion", "kind")}
                         for o in items]
                return 200, {"apiVersion": API_VERSIONS.get(PLURALS[plural], "v1"),
                             "kind": PLURALS[plural] + "List",
                             "metadata": {"resourceVersion": "1"}, "items": items}
            obj = self.objects.get((plural, ns, name))
            if obj is None:
                return 404, status(404, "NotFound", f'{plural} "{name}" not found')
            if sub == "log" and (ns, f"{name}/{query.get('container')}") in self._procs:
                with open(self._procs[(ns, f"{name}/{query['container']}")][1],
                          errors="replace") as f:
                    return 200, f.read()
            self._ephemeral_status(obj)
            if sub == "log" and (ns, name) in self._procs:
                with open(self._procs[(ns, name)][1], errors="replace") as f:
                    return 200, f.read()
            if sub == "log":
                if not started(obj):
                    why = next((((c.get("state") or {}).get("waiting") or {}).get("reason")
                                for c in obj["status"].get("containerStatuses") or []),
                               None) or "ContainerCreating"
                    return 400, status(400, "BadRequest", f'container "debug" in pod "{name}" '
                                       f"is waiting to start: {why}")
                return 200, self.log_for(obj)
            if (ns, name) in self._procs:
                self._running(obj)
                return 200, obj
            if plural == "pods" and name.startswith("clusterip-"):
                self._advance(obj)
            return 200, obj

    def _create(self, plural: str, ns: str, body: dict) -> tuple[int, dict]:
        md = body.setdefault("metadata", {})
        md.setdefault("namespace", ns)
        invalid = invalid_metadata(md)
        if invalid:
            kind = PLURALS[plural]
            return 422, {**status(422, "Invalid", f'{kind} "{md.get("name")}" is invalid: '
                                  + ", ".join(f"{f}: {m}" for f, m in invalid)),
                         "details": {"name": md.get("name"), "kind": plural, "causes": [
                             {"reason": "FieldValueInvalid", "message": m, "field": f}
                             for f, m in invalid]}}
        if (plural, ns, md["name"]) in self.objects:
            return 409, status(409, "AlreadyExists", f'{plural} "{md["name"]}" already exists')
        if plural == "pods":
            violation = pod_security_violation(self.objects.get(("namespaces", "", ns)), body)
            if violation:
                return 403, status(403, "Forbidden",
                                   f'pods "{md["name"]}" is forbidden: {violation}')
        md.setdefault("uid", f"uid-{len(self.created)}")
        body["status"] = {"phase": "Pending"}
        self.objects[(plural, ns, md["name"])] = body
        self.created.append(body)
        run = self.kubelet(body) if self.kubelet is not None and plural == "pods" else None
        if run is not None:
            self._start((ns, md["name"]), *run)
        return 201, body

    def _ephemeral(self, ns: str, name: str, body: dict) -> tuple[int, dict]:
        """PATCH pods/NAME/ephemeralcontainers: new ones are added (and run, with a kubelet);
        none is ever removed or changed, as the API server enforces."""
        obj = self.objects.get(("pods", ns, name))
        if obj is None:
            return 404, status(404, "NotFound", f'pods "{name}" not found')
        have = obj["spec"].setdefault("ephemeralContainers", [])
        for c in (body.get("spec") or {}).get("ephemeralContainers") or []:
            if any(h["name"] == c["name"] for h in have):
                continue
            have.append(c)
            run = self.kubelet_ephemeral(obj, c) if self.kubelet_ephemeral else None
            if run is not None:
                self._start((ns, f"{name}/{c['name']}"), *run)
        self._ephemeral_status(obj)
        return 200, obj

    def _ephemeral_status(self, pod: dict) -> None:
        md = pod.get("metadata") or {}
        out = []
        for c in (pod.get("spec") or {}).get("ephemeralContainers") or []:
            entry = self._procs.get((md.get("namespace"), f"{md.get('name')}/{c['name']}"))
            if entry is None:
                continue
            rc = entry[0].poll()
            out.append({"name": c["name"], "image": c.get("image"), "ready": False,
                        "state": {"running": {"startedAt": "2024-01-01T00:00:00Z"}}
                        if rc is None else {"terminated": {
                            "exitCode": rc, "reason": "Completed" if rc == 0 else "Error"}}})
        if out:
            pod.setdefault("status", {})["ephemeralContainerStatuses"] = out

    # -- the fake kubelet: a pod's container as a real process ------------------------------
    def _start(self, key: tuple[str, str], argv: list[str], pod_ip: str) -> None:
        import subprocess
        import tempfile
        log = tempfile.NamedTemporaryFile(prefix="fake-kubelet-", delete=False)
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        self._procs[key] = (proc, log.name, pod_ip)

    def _running(self, pod: dict) -> None:
        """Running while the process runs; Succeeded or Failed by its exit code."""
        proc, _log, ip = self._procs[(pod["metadata"]["namespace"], pod["metadata"]["name"])]
        rc = proc.poll()
        name = pod["spec"]["containers"][0]["name"]
        state = ({"running": {"startedAt": "2024-01-01T00:00:00Z"}} if rc is None else
                 {"terminated": {"exitCode": rc, "reason": "Completed" if rc == 0 else "Error"}})
        pod["status"] = {"phase": "Running" if rc is None else "Succeeded" if rc == 0 else
                         "Failed", "podIP": ip, "podIPs": [{"ip": ip}],
                         "containerStatuses": [{"name": name, "ready": rc is None,
                                                "image": pod["spec"]["containers"][0]["image"],
                                                "state": state}]}

    def _stop(self, key: tuple[str, str]) -> None:
        import os
        import signal
        entry = self._procs.pop(key, None)
        if entry is None:
            return
        proc, log, _ip = entry
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait(5)
        os.unlink(log)

    def processes_left(self) -> list[str]:
        """Pods whose fake-kubelet process still runs (none once every pod is deleted)."""
        return [f"{ns}/{n}" for (ns, n), (proc, *_rest) in self._procs.items()
                if proc.poll() is None]

    def _advance(self, pod: dict) -> None:
        """The pod's life as the kubelet would show it, one step per status poll."""
        n = self._polls[pod["metadata"]["name"]] = self._polls.get(pod["metadata"]["name"], 0) + 1
        image = pod["spec"]["containers"][0]["image"]
        mode = self.debug_pod(pod) if callable(self.debug_pod) else self.debug_pod
        if mode == "rejected":  # the kubelet's admission: no container ever created
            pod["status"] = {"phase": "Failed", "reason": "OutOfmemory", "message":
                             "Pod was rejected: Node didn't have enough resource: memory, "
                             "requested: 33554432, used: 8253734912, capacity: 8259219456"}
            return
        if mode == "deadline" and n >= self.polls_until_done:
            pod["status"] = {"phase": "Failed", "reason": "DeadlineExceeded", "message":
                             "Pod was active on the node longer than the specified deadline",
                             "containerStatuses": [{"name": "debug", "ready": False,
                                                    "image": image, "state": {"waiting": {
                                                        "reason": "ContainerCreating"}}}]}
            return
        waiting = {"pending": {"reason": "ContainerCreating"},
                   "deadline": {"reason": "ContainerCreating"},
                   "imagepull": {"reason": "ErrImagePull" if n < 3 else "ImagePullBackOff",
                                 "message": f'Back-off pulling image "{image}"'}}
        if mode in waiting:
            pod["status"] = {"phase": "Pending", "containerStatuses": [
                {"name": "debug", "ready": False, "image": image,
                 "state": {"waiting": waiting[mode]}}]}
        elif n < self.polls_until_done:
            pod["status"] = {"phase": "Running", "containerStatuses": [
                {"name": "debug", "ready": True, "image": image,
                 "state": {"running": {"startedAt": "2024-01-01T00:00:00Z"}}}]}
        else:
            code = 1 if mode == "fail" else 0
            pod["status"] = {"phase": "Failed" if code else "Succeeded", "containerStatuses": [
                {"name": "debug", "ready": False, "image": image,
                 "state": {"terminated": {"exitCode": code,
                                          "reason": "Error" if code else "Completed"}}}]}


    # -- websockets: exec and port-forward ---------------------------------------------
    def upgrade(self, h: BaseHTTPRequestHandler, path: str, query: dict[str, list[str]]
                ) -> None:
        """An upgrade request: refused as the API server would (403, 404, 400), or
        answered 101 and served until either side closes."""
        parts = [p for p in path.split("/") if p]
        sub = parts[6] if len(parts) == 7 and parts[:3] == ["api", "v1", "namespaces"] \
            and parts[4] == "pods" else None
        if sub not in ("exec", "portforward"):
            return self._refuse(h, 400, "BadRequest", f"{path}: no websocket here")
        ns, name = parts[3], parts[5]
        resource = f"pods/{sub}"
        if ("create", resource, ns) in self.forbidden or ("create", resource, "") in \
                self.forbidden:
            return self._refuse(h, 403, "Forbidden", f'{resource} is forbidden: User "fake" '
                                f'cannot create resource "{resource}" in API group "" in the '
                                f'namespace "{ns}"')
        pod_obj = self.objects.get(("pods", ns, name))
        if pod_obj is None:
            return self._refuse(h, 404, "NotFound", f'pods "{name}" not found')
        hook = self.exec_for if sub == "exec" else self.port_forward_to
        if hook is None:
            return self._refuse(h, 400, "BadRequest", f"{sub}: upgrade request required")
        if sub == "exec" and not any(query.get(k, ["false"])[0].lower() == "true"
                                     for k in ("stdin", "stdout", "stderr")):
            return self._refuse(h, 400, "BadRequest",
                                "you must specify at least 1 of stdin, stdout, stderr")
        protocol = choose_protocol(h.headers.get("Sec-WebSocket-Protocol"),
                                   EXEC_PROTOCOLS if sub == "exec" else PORTFORWARD_PROTOCOLS)
        key = h.headers.get("Sec-WebSocket-Key")
        if protocol is None or not key or h.headers.get("Sec-WebSocket-Version") != "13":
            return self._refuse(h, 400, "BadRequest", "websocket: bad handshake or no "
                                "subprotocol in common")
        handshake(h.wfile, key, protocol)
        ws = ServerWebSocket(h.connection, h.rfile)
        with self._lock:
            self._streams.add(h.connection)
        try:
            if sub == "exec":
                self._exec(ws, pod_obj, query, protocol)
            else:
                self._forward(ws, pod_obj, query, protocol)
        except (OSError, EOFError):  # the client went away: the stream just ends
            pass
        except ProtocolError:
            ws.close(1002)
        finally:
            with self._lock:
                self._streams.discard(h.connection)

    @staticmethod
    def _refuse(h: BaseHTTPRequestHandler, code: int, reason: str, message: str) -> None:
        h._send(code, status(code, reason, message))  # type: ignore[attr-defined]

    def _exec(self, ws: ServerWebSocket, pod_obj: dict, query: dict[str, list[str]],
              protocol: str) -> None:
        """Run the test's callable for the command; stdout on channel 1, stderr on 2, the
        v1 Status on 3 (Success, NonZeroExitCode, or InternalError), then close."""
        assert self.exec_for is not None
        md = pod_obj["metadata"]
        command = query.get("command", [])
        with self._lock:
            self.execs.append({"pod": f"{md['namespace']}/{md['name']}", "command": command,
                               "container": query.get("container", [None])[0],
                               "protocol": protocol})
        try:
            rc, out, err = self.exec_for(pod_obj, command)
            st: dict = {"metadata": {}, "status": "Success"}
        except DropConnection as e:  # a dying node: some output, then the socket ends
            ws.send_channel(1, e.stdout.encode())
            ws.sock.shutdown(socket.SHUT_RDWR)
            return
        except Exception as e:  # the runtime could not start the command at all
            rc, out, err = -1, "", ""
            why = str(e) if isinstance(e, RuntimeError) else f"{type(e).__name__}: {e}"
            st = {"metadata": {}, "status": "Failure", "reason": "InternalError", "code": 500,
                  "message": f"Internal error occurred: error executing command in container: "
                             f"{why}", "details": {"causes": [{"message": why}]}}
        if rc > 0:
            st = {"metadata": {}, "status": "Failure", "reason": "NonZeroExitCode",
                  "message": f"command terminated with non-zero exit code: error executing "
                             f"command {command}, exit code {rc}",
                  "details": {"causes": [{"reason": "ExitCode", "message": str(rc)}]}}
        if out:
            ws.send_channel(1, out.encode())
        if err:
            ws.send_channel(2, err.encode())
        ws.send_channel(3, json.dumps(st).encode())
        ws.close()
        ws.wait_closed()

    def _forward(self, ws: ServerWebSocket, pod_obj: dict, query: dict[str, list[str]],
                 protocol: str) -> None:
        """Each port's data channel (2i) relayed to the test's TCP server; its error channel
        (2i+1) says why when that server cannot be reached. Both channels first carry the
        port, 2 bytes little-endian. Ends when the client closes or an upstream does."""
        assert self.port_forward_to is not None
        ports = [int(p) for v in query.get("ports", []) for p in v.split(",") if p]
        md = pod_obj["metadata"]
        with self._lock:
            self.forwards.append({"pod": f"{md['namespace']}/{md['name']}", "ports": ports,
                                  "protocol": protocol})
        for i, port in enumerate(ports):
            for channel in (2 * i, 2 * i + 1):
                ws.send_channel(channel, struct.pack("<H", port))
        upstreams: list[socket.socket | None] = []
        for i, port in enumerate(ports):
            try:
                up: socket.socket | None = socket.create_connection(
                    self.port_forward_to(pod_obj, port), timeout=10)
            except OSError as e:
                up = None
                ws.send_channel(2 * i + 1, f"error forwarding port {port} to pod "
                                f"{md['name']}: {e}".encode())
            upstreams.append(up)
        with self._lock:
            self._streams.update(u for u in upstreams if u)

        def pump(channel: int, up: socket.socket) -> None:
            try:
                while data := up.recv(65536):
                    ws.send_channel(channel, data)
            except OSError:
                pass
            ws.close()  # the pod closed the port: the kubelet ends the stream

        pumps = [threading.Thread(target=pump, args=(2 * i, up), daemon=True)
                 for i, up in enumerate(upstreams) if up]
        for t in pumps:
            t.start()
        try:
            while True:
                op, data = ws.recv()
                if op == OP_CLOSE:
                    break
                channel, payload = (data[0], data[1:]) if data else (None, b"")
                if channel is None or channel % 2 or channel // 2 >= len(ports):
                    break  # only data channels carry client bytes
                up = upstreams[channel // 2]
                if up is not None and payload:
                    up.sendall(payload)
        finally:
            for up in upstreams:
                if up is not None:
                    with self._lock:
                        self._streams.discard(up)
                    try:
                        up.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    up.close()
            for t in pumps:
                t.join(5)
            ws.close()


# -- what the API server refuses ----------------------------------------------------------
DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
LABEL_VALUE_MSG = ("a valid label must be an empty string or consist of alphanumeric "
                   "characters, '-', '_' or '.', and must start and end with an alphanumeric "
                   "character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for "
                   "validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')")


def invalid_metadata(md: dict) -> list[tuple[str, str]]:
    """apimachinery's ValidateObjectMeta for a name and labels: (field, message) each."""
    out = []
    name = md.get("name") or ""
    if len(name) > 253 or not DNS1123_SUBDOMAIN.fullmatch(name):
        out.append(("metadata.name", f'Invalid value: "{name}": a lowercase RFC 1123 '
                    "subdomain must consist of lower case alphanumeric characters, '-' or "
                    "'.', and must start and end with an alphanumeric character"))
    for value in (md.get("labels") or {}).values():
        if len(value) > 63:
            out.append(("metadata.labels", f'Invalid value: "{value}": must be no more than '
                        "63 characters"))
        if not LABEL_VALUE.fullmatch(value):
            out.append(("metadata.labels", f'Invalid value: "{value}": {LABEL_VALUE_MSG}'))
    return out


# The capabilities the baseline level lets a container add (pod-security-admission's
# check_capabilities_baseline.go).
BASELINE_CAPS = {"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
                 "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"}


def pod_security_violation(ns_obj: dict | None, pod_obj: dict) -> str | None:
    """What Pod Security Admission says of a pod in a namespace labelled
    pod-security.kubernetes.io/enforce=baseline|restricted (None: admitted)."""
    labels = ((ns_obj or {}).get("metadata") or {}).get("labels") or {}
    level = labels.get("pod-security.kubernetes.io/enforce", "privileged")
    if level == "privileged":
        return None
    version = labels.get("pod-security.kubernetes.io/enforce-version", "latest")
    spec = pod_obj.get("spec") or {}
    found = []
    hosts = [f"{k}=true" for k in ("hostNetwork", "hostPID", "hostIPC") if spec.get(k)]
    if hosts:
        found.append(f"host namespaces ({', '.join(hosts)})")
    for c in spec.get("containers") or []:
        sc = c.get("securityContext") or {}
        if sc.get("privileged"):
            found.append(f'privileged (container "{c["name"]}" must not set '
                         "securityContext.privileged=true)")
        extra = [x for x in (sc.get("capabilities") or {}).get("add") or []
                 if x not in BASELINE_CAPS]
        if extra:
            found.append(f'non-default capabilities (container "{c["name"]}" must not include '
                         + ", ".join(f'"{x}"' for x in extra)
                         + " in securityContext.capabilities.add)")
        if level == "restricted" and not sc.get("runAsNonRoot"):
            found.append(f'runAsNonRoot != true (pod or container "{c["name"]}" must set '
                         "securityContext.runAsNonRoot=true)")
    if not found:
        return None
    return f'violates PodSecurity "{level}:{version}": {", ".join(found)}'


def started(pod_obj: dict) -> bool:
    """Whether a container of the pod ever ran: only then has it a log."""
    return any((c.get("state") or {}).get("running") or (c.get("state") or {}).get("terminated")
               for c in (pod_obj.get("status") or {}).get("containerStatuses") or [])


# -- object builders --------------------------------------------------------------------
def namespace(name: str, enforce: str | None = None) -> dict:
    labels = {"kubernetes.io/metadata.name": name}
    if enforce:
        labels["pod-security.kubernetes.io/enforce"] = enforce
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": labels}}


def service(name: str, ns: str, cluster_ip: str, ports: list[dict],
            selector: dict | None = None, **spec: object) -> dict:
    s: dict = {"type": "ClusterIP", "clusterIP": cluster_ip, "clusterIPs": [cluster_ip],
               "ports": ports, "sessionAffinity": "None", "internalTrafficPolicy": "Cluster",
               "ipFamilies": ["IPv4"], **spec}
    if selector is not None:
        s["selector"] = selector
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": ns, "uid": f"uid-{name}"}, "spec": s}


def endpoint_slice(service_name: str, ns: str, ports: list[dict],
                   endpoints: list[tuple[str, str, str]]) -> dict:
    """endpoints: (ip, node, pod name)."""
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"{service_name}-abcde", "namespace": ns,
                         "labels": {"kubernetes.io/service-name": service_name}},
            "addressType": "IPv4", "ports": ports,
            "endpoints": [{"addresses": [ip], "nodeName": node,
                           "conditions": {"ready": True, "serving": True, "terminating": False},
                           "targetRef": {"kind": "Pod", "namespace": ns, "name": pod}}
                          for ip, node, pod in endpoints]}


def pod(name: str, ns: str, ip: str, node: str, labels: dict | None = None,
        ready: bool = True, **spec: object) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": labels or {}},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "app"}],
                     "dnsPolicy": "ClusterFirst", **spec},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                       "conditions": [{"type": "Ready",
                                       "status": "True" if ready else "False"}]}}


def node(name: str, ip: str, control_plane: bool = False, pod_cidr: str = "10.244.0.0/24"
         ) -> dict:
    # the kubelet's hostname label: a long FQDN node name keeps its first label
    labels = {"kubernetes.io/hostname": name if len(name) <= 63 else name.split(".")[0][:63]}
    if control_plane:
        labels["node-role.kubernetes.io/control-plane"] = ""
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels},
            "spec": {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr]},
            "status": {"addresses": [{"type": "InternalIP", "address": ip},
                                     {"type": "Hostname", "address": name}],
                       "conditions": [{"type": "Ready", "status": "True"}]}}


def section_log(files: dict[str, str], errors: dict[str, str] | None = None) -> str:
    """A debug pod's log as the dump script prints it (see debugpod.SCRIPT)."""
    m = "==== kubectl-clusterip"
    out = []
    for name, text in files.items():
        out += [f"{m} BEGIN {name} ====", text, f"{m} END {name} rc=0 ===="]
    for name, err in (errors or {}).items():
        out += [f"{m} BEGIN {name} ====", "", f"{m} END {name} rc=1 ====",
                f"{m} STDERR {name} ====", err, f"{m} END-STDERR {name} ===="]
    return "\n".join([*out, f"{m} DONE ====", ""])


DNSMASQ = "/usr/sbin/dnsmasq"


def free_port(kind: int) -> int:
    import socket
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Dnsmasq:
    """dnsmasq on 127.0.0.1:<random port>, answering only what it is given, in foreground."""

    def __init__(self, args: list[str]) -> None:
        import subprocess
        import time
        for _ in range(5):  # the port is free when chosen; retry if another took it since
            self.port = free_port(2)  # SOCK_DGRAM
            self.proc = subprocess.Popen(
                [DNSMASQ, "--keep-in-foreground", "--no-resolv", "--no-hosts",
                 "--log-facility=-", "--listen-address=127.0.0.1",
                 "--bind-interfaces", f"--port={self.port}", "--user=root", "--pid-file=",
                 "--conf-file=/dev/null", *args],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline and self.proc.poll() is None:
                if self._answers():
                    return
                time.sleep(0.05)
            self.stop()
        raise RuntimeError("dnsmasq did not start")

    def _answers(self) -> bool:
        import dns.message
        import dns.query
        try:
            dns.query.udp(dns.message.make_query("probe.invalid.", "A"), "127.0.0.1",
                          port=self.port, timeout=0.2)
            return True
        except Exception:
            return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(3)
            except Exception:
                self.proc.kill()
                self.proc.wait(3)

    def __enter__(self) -> Dnsmasq:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
