"""Where completion candidates come from: a snapshot directory, or the cluster's API.

Stdlib only (one HTTP GET per list), so a TAB never waits for the kubernetes client to load.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

if TYPE_CHECKING:
    import ssl

TIMEOUT = 2.0  # seconds per API request: a dead cluster must not freeze the prompt for long


class Source:
    """Names of API objects: from a snapshot directory, or from the cluster's API."""

    namespace = "default"  # the namespace bare names are in

    def names(self, plural: str, namespace: str | None) -> list[str]:
        raise NotImplementedError

    def service_ports(self, namespace: str, name: str) -> list[dict]:
        return []

    def kubeconfig_names(self, section: str) -> list[str]:
        return []


class Lazy(Source):
    """A Source built on first use: listing commands or flags never reads the kubeconfig."""

    def __init__(self, make: Any) -> None:
        self._make, self._src = make, None

    def __getattribute__(self, name: str) -> Any:
        if name in ("_make", "_src"):
            return object.__getattribute__(self, name)
        if self._src is None:
            self._src = self._make()
        return getattr(self._src, name)

class SnapshotSource(Source):
    """A snapshot directory: objects.yaml, and nodes/<node>/ for the nodes --node can name."""

    def __init__(self, root: Path) -> None:
        """Read as `--snapshot` reads (bounded, checked); a broken snapshot offers nothing."""
        from kubectl_clusterip.model import ClusterIPError
        from kubectl_clusterip.reads import load_yaml, read_text
        from kubectl_clusterip.schema import check_meta, check_objects

        self.root = root
        self.objects: list[dict] = []
        try:
            doc = load_yaml(read_text(str(root / "objects.yaml")), "objects.yaml") or {}
            objects = doc.get("items") or [] if isinstance(doc, dict) else []
            check_objects(objects, "objects.yaml")
            self.objects = objects
        except ClusterIPError:
            pass
        try:
            meta = load_yaml(read_text(str(root / "snapshot.yaml")), "snapshot.yaml") or {}
            check_meta(meta, "snapshot.yaml")
            self.namespace = meta.get("namespace") or "default"
        except ClusterIPError:
            pass

    def _of(self, kind: str, namespace: str | None) -> list[dict]:
        return [o for o in self.objects if o.get("kind") == kind and
                (namespace is None or (o.get("metadata") or {}).get("namespace") == namespace)]

    def names(self, plural: str, namespace: str | None) -> list[str]:
        if plural == "nodes" and (self.root / "nodes").is_dir():
            return sorted(p.name for p in (self.root / "nodes").iterdir() if p.is_dir())
        if plural == "namespaces":
            return sorted({(o.get("metadata") or {}).get("namespace", "") for o in self.objects}
                          - {""})
        kind = {"services": "Service", "pods": "Pod", "nodes": "Node"}[plural]
        return sorted((o.get("metadata") or {}).get("name", "") for o in self._of(kind, namespace))

    def service_ports(self, namespace: str, name: str) -> list[dict]:
        for o in self._of("Service", namespace):
            if (o.get("metadata") or {}).get("name") == name:
                return (o.get("spec") or {}).get("ports") or []
        return []


class ApiSource(Source):
    """The cluster of the kubeconfig context, read with one HTTP GET per list (stdlib only)."""

    def __init__(self, kubeconfig: str | None, context: str | None, cluster: str | None,
                 user: str | None) -> None:
        from kubectl_clusterip.cluster.kubeconfig import ConnectionFlags, load

        self.kc = load(ConnectionFlags(kubeconfig, context, cluster, user))
        self.namespace = self.kc.namespace

    def kubeconfig_names(self, section: str) -> list[str]:
        return sorted(e.get("name", "") for e in self.kc.doc.get(section) or [])

    def names(self, plural: str, namespace: str | None) -> list[str]:
        path = (f"/api/v1/namespaces/{quote(namespace)}/{plural}" if namespace
                else f"/api/v1/{plural}")
        doc = self.get(path + "?limit=1000", metadata_only=True)
        return sorted(i["metadata"]["name"] for i in doc.get("items") or [])

    def service_ports(self, namespace: str, name: str) -> list[dict]:
        doc = self.get(f"/api/v1/namespaces/{quote(namespace)}/services/{quote(name)}")
        return (doc.get("spec") or {}).get("ports") or []

    def get(self, path: str, metadata_only: bool = False) -> dict:
        import base64
        import http.client
        import tempfile

        doc = self.kc.doc
        ctx = doc["contexts"][0]["context"]
        cluster = _named(doc, "clusters", ctx["cluster"]).get("cluster") or {}
        user = (_named(doc, "users", ctx.get("user") or "") or {}).get("user") or {}
        url = urlsplit(cluster.get("server") or "")
        headers = {"Accept": "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;"
                   "v=v1,application/json" if metadata_only else "application/json",
                   "User-Agent": "kubectl-clusterip-completion"}
        creds = _credentials(user)
        if creds.get("token"):
            headers["Authorization"] = f"Bearer {creds['token']}"
        elif user.get("username"):
            pair = f"{user['username']}:{user.get('password', '')}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
        timeout = min(self.kc.timeout or TIMEOUT, TIMEOUT)
        with tempfile.TemporaryDirectory(prefix="kubectl-clusterip-") as tmp:
            conn: http.client.HTTPConnection
            if url.scheme == "https":
                conn = http.client.HTTPSConnection(url.hostname or "", url.port or 443,
                                                   timeout=timeout,
                                                   context=_tls(cluster, creds, Path(tmp)))
            else:
                conn = http.client.HTTPConnection(url.hostname or "", url.port or 80,
                                                  timeout=timeout)
            try:
                conn.request("GET", url.path.rstrip("/") + path, headers=headers)
                resp = conn.getresponse()
                body = resp.read()
            finally:
                conn.close()
        if resp.status != 200:
            raise RuntimeError(f"GET {path}: HTTP {resp.status}")
        return json.loads(body)


def _named(doc: dict, section: str, name: str) -> dict:
    return next((e for e in doc.get(section) or [] if e.get("name") == name), {})


def _credentials(user: dict) -> dict:
    """Token or client certificate: inline, from a file, from an exec plugin or auth-provider."""
    creds = {k: user[k] for k in ("token", "client-certificate", "client-key",
                                  "client-certificate-data", "client-key-data") if user.get(k)}
    if not creds.get("token") and user.get("tokenFile"):
        creds["token"] = Path(user["tokenFile"]).read_text().strip()
    provider = (user.get("auth-provider") or {}).get("config") or {}
    if not creds.get("token") and (provider.get("id-token") or provider.get("access-token")):
        creds["token"] = provider.get("id-token") or provider.get("access-token")
    if user.get("exec"):
        status = _exec_credential(user["exec"])
        if status.get("token"):
            creds["token"] = status["token"]
        if status.get("clientCertificateData"):
            creds["client-certificate-data"] = status["clientCertificateData"]
            creds["client-key-data"] = status.get("clientKeyData", "")
            creds["pem"] = True  # exec plugins hand over PEM text, not base64
    return creds


def _exec_credential(spec: dict) -> dict:
    """Run a client-go credential plugin (aws, gke-gcloud-auth-plugin, kubelogin, ...)."""
    import subprocess

    env = dict(os.environ)
    env.update({e["name"]: e["value"] for e in spec.get("env") or []})
    env["KUBERNETES_EXEC_INFO"] = json.dumps({
        "apiVersion": spec.get("apiVersion", "client.authentication.k8s.io/v1"),
        "kind": "ExecCredential", "spec": {"interactive": False}})
    out = subprocess.run([spec["command"], *(spec.get("args") or [])], env=env,
                         capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL)
    if out.returncode != 0:
        raise RuntimeError(f"credential plugin {spec['command']} failed")
    return json.loads(out.stdout).get("status") or {}


def _tls(cluster: dict, creds: dict, tmp: Path) -> ssl.SSLContext:
    """Verify against the cluster's CA (or not, if the kubeconfig says so); client certs."""
    import base64
    import ssl

    ca_data = cluster.get("certificate-authority-data")
    ctx = ssl.create_default_context(
        cafile=cluster.get("certificate-authority") or None,
        cadata=base64.b64decode(ca_data).decode() if ca_data else None)
    if cluster.get("insecure-skip-tls-verify"):
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    cert, key = creds.get("client-certificate"), creds.get("client-key")
    if creds.get("client-certificate-data"):
        cert, key = str(tmp / "cert.pem"), str(tmp / "key.pem")
        for path, name in ((cert, "client-certificate-data"), (key, "client-key-data")):
            data = creds[name] if creds.get("pem") else base64.b64decode(creds[name]).decode()
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(data)
    if cert:
        ctx.load_cert_chain(cert, key)
    return ctx
