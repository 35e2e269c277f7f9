"""Kubeconfig loading with kubectl's merge rules, which the Python client gets wrong.

kubectl merges every file of `KUBECONFIG=a:b` with first-file-wins per context, cluster and
user name, and takes current-context from the first file that sets one. The client's own
merge lets later files win in places, so the merge is done here and the client only gets one
already-merged document (with relative file paths made absolute to the file that named them).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from kubectl_clusterip.model import ClusterIPError

# Keys holding file paths, relative to the kubeconfig file that holds them.
_PATH_KEYS = {"clusters": ("certificate-authority",),
              "users": ("client-certificate", "client-key", "tokenFile")}


@dataclass(frozen=True)
class ConnectionFlags:
    """kubectl's connection flags, as given on the command line (None: not given)."""

    kubeconfig: str | None = None
    context: str | None = None
    cluster: str | None = None
    user: str | None = None
    namespace: str | None = None
    request_timeout: str | None = None


@dataclass
class KubeConfig:
    """The merged document, the context in use, and the namespace commands default to."""

    doc: dict
    context: str
    namespace: str
    timeout: float | None  # seconds per request; None waits as long as the server does
    files: list[str]


def kubeconfig_files(explicit: str | None, environ: dict[str, str] | None = None) -> list[str]:
    """--kubeconfig (one file), else $KUBECONFIG (a path list), else ~/.kube/config."""
    env = os.environ if environ is None else environ
    if explicit:
        if not Path(explicit).is_file():
            raise ClusterIPError(f"--kubeconfig {explicit}: no such file")
        return [explicit]
    if env.get("KUBECONFIG"):
        files = [p for p in env["KUBECONFIG"].split(os.pathsep) if p]
        found = [p for p in dict.fromkeys(files) if Path(p).is_file()]
        if not found:
            raise ClusterIPError(f"KUBECONFIG={env['KUBECONFIG']}: none of these files exist")
        return found
    default = Path(env.get("HOME", str(Path.home()))) / ".kube" / "config"
    if not default.is_file():
        raise ClusterIPError(f"no kubeconfig: set KUBECONFIG, pass --kubeconfig, or create "
                             f"{default}")
    return [str(default)]


def merge(files: list[str]) -> dict:
    """kubectl's merge: the first file to define a name wins, and the first current-context."""
    out: dict = {"apiVersion": "v1", "kind": "Config", "clusters": [], "contexts": [],
                 "users": [], "current-context": ""}
    for f in files:
        try:
            doc = yaml.safe_load(Path(f).read_text()) or {}
        except (OSError, yaml.YAMLError, UnicodeDecodeError) as e:
            raise ClusterIPError(f"{f}: unreadable kubeconfig: {str(e).splitlines()[0]}") from None
        if not isinstance(doc, dict):
            raise ClusterIPError(f"{f}: not a kubeconfig (expected a mapping)")
        if not out["current-context"] and doc.get("current-context"):
            out["current-context"] = doc["current-context"]
        base = Path(f).resolve().parent
        for section in ("clusters", "contexts", "users"):
            seen = {e.get("name") for e in out[section]}
            for entry in doc.get(section) or []:
                if not isinstance(entry, dict) or entry.get("name") in seen:
                    continue
                out[section].append(_absolute_paths(section, entry, base))
                seen.add(entry.get("name"))
    return out


def _absolute_paths(section: str, entry: dict, base: Path) -> dict:
    inner_key = section[:-1]  # clusters -> cluster, users -> user
    inner = dict(entry.get(inner_key) or {})
    for key in _PATH_KEYS.get(section, ()):
        value = inner.get(key)
        if isinstance(value, str) and value and not Path(value).is_absolute():
            inner[key] = str(base / value)
    return {**entry, inner_key: inner}


def parse_timeout(value: str | None) -> float | None:
    """kubectl's --request-timeout: `0` (no timeout), `30`, `30s`, `1m`, `1h`."""
    if value is None or value.strip() in ("", "0"):
        return None
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)?", value.strip())
    if not m:
        raise ClusterIPError(f"--request-timeout {value}: expected a duration like 30s or 1m")
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]
    return float(m.group(1)) * scale or None


def _named(doc: dict, section: str, name: str) -> dict | None:
    return next((e for e in doc[section] if e.get("name") == name), None)


def load(flags: ConnectionFlags, environ: dict[str, str] | None = None) -> KubeConfig:
    """The merged kubeconfig with --context/--cluster/--user applied, and the namespace."""
    files = kubeconfig_files(flags.kubeconfig, environ)
    doc = merge(files)
    name = flags.context or doc["current-context"]
    if not name:
        raise ClusterIPError(f"no current context in {', '.join(files)}: pass --context")
    ctx = _named(doc, "contexts", name)
    if ctx is None:
        raise ClusterIPError(f'context "{name}" not found in {", ".join(files)}')
    inner = dict(ctx.get("context") or {})
    if flags.cluster:
        inner["cluster"] = flags.cluster
    if flags.user:
        inner["user"] = flags.user
    for section, key in (("clusters", "cluster"), ("users", "user")):
        if inner.get(key) and _named(doc, section, inner[key]) is None:
            raise ClusterIPError(f'{key} "{inner[key]}" of context "{name}" not found in '
                                 f'{", ".join(files)}')
    if not inner.get("cluster"):
        raise ClusterIPError(f'context "{name}" names no cluster')
    doc["contexts"] = [{"name": name, "context": inner}] + [
        c for c in doc["contexts"] if c.get("name") != name]
    doc["current-context"] = name
    namespace = flags.namespace or inner.get("namespace") or "default"
    return KubeConfig(doc, name, namespace, parse_timeout(flags.request_timeout), files)


def client_configuration(kc: KubeConfig):
    """A kubernetes.client.Configuration for the chosen context (the client does TLS/auth)."""
    from kubernetes import client
    from kubernetes.config.config_exception import ConfigException
    from kubernetes.config.kube_config import KubeConfigLoader

    doc = dict(kc.doc)
    if not doc["users"]:  # the loader insists on a user entry; kubectl allows none
        doc["users"] = [{"name": "", "user": {}}]
    conf = client.Configuration()
    try:
        KubeConfigLoader(doc, active_context=kc.context).load_and_set(conf)
    except ConfigException as e:
        raise ClusterIPError(f"kubeconfig context {kc.context}: {e}") from None
    except Exception as e:  # exec plugins, bad certificates: the client raises many kinds
        raise ClusterIPError(f"kubeconfig context {kc.context}: {type(e).__name__}: {e}"
                             ) from None
    return conf
