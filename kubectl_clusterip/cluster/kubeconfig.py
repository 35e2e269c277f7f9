"""Kubeconfig loading with kubectl's merge rules, which the Python client gets wrong.

kubectl merges every file of `KUBECONFIG=a:b` with first-file-wins per context, cluster and
user name, and takes current-context from the first file that sets one. The client's own
merge lets later files win in places, so the merge is done here and the client only gets one
already-merged document (with relative file paths made absolute to the file that named them).
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from kubectl_clusterip.model import ClusterIPError
from kubectl_clusterip.reads import cut, load_yaml, read_text

# Keys holding file paths, relative to the kubeconfig file that holds them.
_PATH_KEYS = {"clusters": ("certificate-authority",),
              "users": ("client-certificate", "client-key", "tokenFile")}
MAX_KUBECONFIG_BYTES = 64 * 1024 * 1024  # embedded certificates are kilobytes each


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
        if not Path(explicit).exists():
            raise ClusterIPError(f"--kubeconfig {cut(explicit)}: no such file")
        return [explicit]  # a directory or a FIFO is refused by the bounded read
    if env.get("KUBECONFIG"):
        files = [p for p in env["KUBECONFIG"].split(os.pathsep) if p]
        found = [p for p in dict.fromkeys(files) if Path(p).is_file()]
        if not found:
            raise ClusterIPError(f"KUBECONFIG={cut(env['KUBECONFIG'])}: none of these files "
                                 "exist")
        return found
    default = Path(env.get("HOME", str(Path.home()))) / ".kube" / "config"
    if not default.is_file():
        raise ClusterIPError(f"no kubeconfig: set KUBECONFIG, pass --kubeconfig, or create "
                             f"{default}")
    return [str(default)]


def merge(files: list[str]) -> dict:
    """kubectl's merge: the first file to define a name wins, and the first current-context.

    Each entry keeps where it came from (`_from`: "FILE: clusters[2]") for the messages of
    `load`, which checks the entries it uses."""
    out: dict = {"apiVersion": "v1", "kind": "Config", "clusters": [], "contexts": [],
                 "users": [], "current-context": ""}
    for f in files:
        doc = load_yaml(read_text(f, MAX_KUBECONFIG_BYTES, "a kubeconfig"), f) or {}
        if not isinstance(doc, dict):
            raise ClusterIPError(f"{f}: not a kubeconfig (expected a mapping)")
        current = doc.get("current-context")
        if current is not None and not isinstance(current, str):
            raise ClusterIPError(f"{f}: current-context: expected a name, not {cut(current)}")
        if not out["current-context"] and current:
            out["current-context"] = current
        base = Path(f).resolve().parent
        for section in ("clusters", "contexts", "users"):
            seen = {e["name"] for e in out[section]}
            for i, entry in enumerate(_entries(doc, section, f)):
                if entry["name"] not in seen:
                    out[section].append({**_absolute_paths(section, entry, base),
                                         "_from": f"{f}: {section}[{i}]"})
                    seen.add(entry["name"])
    return out


def _entries(doc: dict, section: str, f: str) -> list[dict]:
    """A section's entries, each a mapping with a string name and a mapping inside."""
    entries = doc.get(section)
    if entries is None:
        return []
    if not isinstance(entries, list):
        raise ClusterIPError(f"{f}: {section}: expected a list of named entries, not "
                             f"{cut(entries)}")
    inner_key = section[:-1]
    for i, entry in enumerate(entries):
        where = f"{f}: {section}[{i}]"
        if not isinstance(entry, dict):
            raise ClusterIPError(f"{where}: expected a mapping with name and {inner_key}, "
                                 f"not {cut(entry)}")
        if not isinstance(entry.get("name"), str):
            raise ClusterIPError(f"{where}.name: expected a name, not {cut(entry.get('name'))}")
        inner = entry.get(inner_key)
        if inner is not None and not isinstance(inner, dict):
            raise ClusterIPError(f"{where}.{inner_key}: expected a mapping, not {cut(inner)}")
    return entries


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
    m = re.fullmatch(r"([0-9]{1,9}(?:\.[0-9]{1,9})?)(ms|s|m|h)?", value.strip())
    if not m:
        raise ClusterIPError(f"--request-timeout {value}: expected a duration like 30s or 1m")
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]
    return float(m.group(1)) * scale or None


def _named(doc: dict, section: str, name: str) -> dict | None:
    return next((e for e in doc[section] if e.get("name") == name), None)


def _check_strings(entry: dict, inner_key: str, keys: tuple[str, ...]) -> None:
    inner = entry.get(inner_key) or {}
    for key in keys:
        value = inner.get(key)
        if value is not None and not isinstance(value, str):
            raise ClusterIPError(f"{entry['_from']}.{inner_key}.{key}: expected a string, "
                                 f"not {cut(value)}")


def _check_cluster(entry: dict) -> None:
    """The cluster in use: `server` must be an http(s) URL with a host."""
    _check_strings(entry, "cluster", ("server", "certificate-authority",
                                      "certificate-authority-data", "proxy-url",
                                      "tls-server-name"))
    server = (entry.get("cluster") or {}).get("server")
    if not server:
        raise ClusterIPError(f"{entry['_from']}.cluster.server: missing (the API server's URL)")
    try:
        url = urlsplit(server)
        url.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError:
        url = None
    if url is None or url.scheme not in ("http", "https") or not url.hostname:
        raise ClusterIPError(f"{entry['_from']}.cluster.server: {cut(server)} is not a URL "
                             "(expected https://HOST[:PORT])")


def _check_user(entry: dict) -> None:
    """The user in use: string credentials, and an exec plugin that names its command."""
    _check_strings(entry, "user", ("token", "tokenFile", "username", "password",
                                   "client-certificate", "client-certificate-data",
                                   "client-key", "client-key-data"))
    plugin = (entry.get("user") or {}).get("exec")
    if plugin is None:
        return
    where = f"{entry['_from']}.user.exec"
    if not isinstance(plugin, dict):
        raise ClusterIPError(f"{where}: expected a mapping, not {cut(plugin)}")
    if not isinstance(plugin.get("command"), str) or not plugin["command"]:
        raise ClusterIPError(f"{where}.command: missing (the credential plugin to run)")
    args, env = plugin.get("args"), plugin.get("env")
    if args is not None and not (isinstance(args, list) and
                                 all(isinstance(a, str) for a in args)):
        raise ClusterIPError(f"{where}.args: expected a list of strings, not {cut(args)}")
    if env is not None and not (isinstance(env, list) and all(
            isinstance(e, dict) and isinstance(e.get("name"), str) and
            isinstance(e.get("value"), str) for e in env)):
        raise ClusterIPError(f"{where}.env: expected a list of name/value strings, not "
                             f"{cut(env)}")


def load(flags: ConnectionFlags, environ: dict[str, str] | None = None) -> KubeConfig:
    """The merged kubeconfig with --context/--cluster/--user applied, and the namespace."""
    files = kubeconfig_files(flags.kubeconfig, environ)
    doc = merge(files)
    name = flags.context or doc["current-context"]
    if not name:
        raise ClusterIPError(f"no current context in {', '.join(files)}: pass --context")
    ctx = _named(doc, "contexts", name)
    if ctx is None:
        raise ClusterIPError(f'context "{cut(name)}" not found in {", ".join(files)}')
    _check_strings(ctx, "context", ("cluster", "user", "namespace"))
    inner = dict(ctx.get("context") or {})
    if flags.cluster:
        inner["cluster"] = flags.cluster
    if flags.user:
        inner["user"] = flags.user
    for section, key, check in (("clusters", "cluster", _check_cluster),
                                ("users", "user", _check_user)):
        if inner.get(key):
            entry = _named(doc, section, inner[key])
            if entry is None:
                raise ClusterIPError(f'{key} "{cut(inner[key])}" of context "{cut(name)}" not '
                                     f'found in {", ".join(files)}')
            check(entry)
    if not inner.get("cluster"):
        raise ClusterIPError(f'context "{cut(name)}" names no cluster')
    doc["contexts"] = [{"name": name, "context": inner}] + [
        c for c in doc["contexts"] if c.get("name") != name]
    doc["current-context"] = name
    for section in ("clusters", "contexts", "users"):  # the client gets kubeconfig keys only
        doc[section] = [{k: v for k, v in e.items() if k != "_from"} for e in doc[section]]
    namespace = flags.namespace or inner.get("namespace") or "default"
    return KubeConfig(doc, name, namespace, parse_timeout(flags.request_timeout), files)


def quiet_client_logging() -> None:
    """Keep the client's log lines off the terminal: our errors say what failed, in one line.

    The client calls `logging.error()` on the root logger (exec plugin failures), which
    configures a stderr handler there on first use; from then on every urllib3 "Retrying"
    warning reaches the terminal. A handler already on the root logger prevents that.
    """
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.NullHandler())


def client_configuration(kc: KubeConfig):
    """A kubernetes.client.Configuration for the chosen context (the client does TLS/auth)."""
    from kubernetes import client
    from kubernetes.config.config_exception import ConfigException
    from kubernetes.config.kube_config import KubeConfigLoader

    quiet_client_logging()
    doc = dict(kc.doc)
    if not doc["users"]:  # the loader insists on a user entry; kubectl allows none
        doc["users"] = [{"name": "", "user": {}}]
    conf = client.Configuration()
    try:
        KubeConfigLoader(doc, active_context=kc.context).load_and_set(conf)
    except ConfigException as e:  # the client's own words about the kubeconfig
        raise ClusterIPError(f"kubeconfig context {cut(kc.context)}: "
                             f"{cut(str(e).strip().splitlines()[0] if str(e).strip() else e)}"
                             ) from None
    except Exception:  # exec plugins, bad certificates: the client raises many kinds
        raise ClusterIPError(f"kubeconfig context {cut(kc.context)}: the kubernetes client "
                             "cannot use it (check the cluster's certificate-authority and the "
                             "user's credentials)") from None
    return conf
