"""A thin, Pythonic wrapper over the Kubernetes client: plain dicts in, plain dicts out.

Objects come back in the API's own JSON shape (camelCase, as `kubectl get -o json` prints
them, with apiVersion and kind on every item), read raw with `_preload_content=False` so the
client's model classes never rename a field. Every HTTP failure becomes a ClusterIPError
that names what was refused, or `None` for a 404 where absence is an answer.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Callable

from kubectl_clusterip.cluster.kubeconfig import KubeConfig, client_configuration
from kubectl_clusterip.model import ClusterIPError


class ApiError(ClusterIPError):
    """The API server answered with an error: `status` and its own `server_message`."""

    def __init__(self, text: str, status: int = 0, server_message: str = "") -> None:
        super().__init__(text)
        self.status, self.server_message = status, server_message


class Forbidden(ApiError):
    """RBAC (or an admission plugin) refused a request; the message says which."""


class NotFound(ApiError):
    """The object does not exist."""


@dataclass(frozen=True)
class Kind:
    """Where a kind lives in the API: group/version, plural, and whether namespaced."""

    api_version: str
    kind: str
    plural: str
    namespaced: bool = True


KINDS = {k.kind: k for k in (
    Kind("v1", "Service", "services"),
    Kind("v1", "Pod", "pods"),
    Kind("v1", "Node", "nodes", namespaced=False),
    Kind("v1", "ConfigMap", "configmaps"),
    Kind("discovery.k8s.io/v1", "EndpointSlice", "endpointslices"),
    Kind("apps/v1", "DaemonSet", "daemonsets"),
    Kind("networking.k8s.io/v1", "NetworkPolicy", "networkpolicies"),
    Kind("v1", "Namespace", "namespaces", namespaced=False),
)}
# The client class that serves each kind not in CoreV1Api.
GROUP_APIS = {"EndpointSlice": "DiscoveryV1Api", "DaemonSet": "AppsV1Api",
              "NetworkPolicy": "NetworkingV1Api"}


def strip(obj: dict) -> dict:
    """Drop managedFields: noise in a snapshot a person reads, never used by a trace."""
    md = obj.get("metadata")
    if isinstance(md, dict) and "managedFields" in md:
        obj = {**obj, "metadata": {k: v for k, v in md.items() if k != "managedFields"}}
    return obj


@dataclass
class Api:
    """The few calls a trace makes. `calls` counts requests (polling included)."""

    kc: KubeConfig
    client: Any = None  # kubernetes.client.ApiClient
    calls: int = 0
    _apis: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.client is None:
            from kubernetes import client
            self.client = client.ApiClient(client_configuration(self.kc))

    @property
    def server(self) -> str:
        return str(getattr(self.client.configuration, "host", "the API server"))

    def _api(self, name: str):
        if name not in self._apis:
            from kubernetes import client
            self._apis[name] = getattr(client, name)(self.client)
        return self._apis[name]

    def core(self):
        return self._api("CoreV1Api")

    def _call(self, what: str, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        """One request; `what` is `verb resource [in namespace ns]` for error messages."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        self.calls += 1
        if self.kc.timeout is not None:
            kwargs.setdefault("_request_timeout", self.kc.timeout)
        try:
            return fn(*args, **kwargs)
        except ApiException as e:
            raise api_error(e, what) from None
        except HTTPError as e:
            reason = getattr(e, "reason", None) or e
            raise ClusterIPError(f"cannot reach the API server at {self.server} ({what}): "
                                 f"{reason}") from None
        except OSError as e:
            raise ClusterIPError(f"cannot reach the API server at {self.server}: {e}") from None
        except ValueError as e:  # the client's request validation: a bug here, said in a line
            first = str(e).splitlines()[0]
            raise ClusterIPError(f"{what}: the request was invalid: {first}") from None

    def _json(self, what: str, fn: Callable, *args: Any, **kwargs: Any) -> dict:
        resp = self._call(what, fn, *args, _preload_content=False, **kwargs)
        try:
            return json.loads(resp.data)
        except ValueError:
            raise ClusterIPError(f"{what}: the API server answered with non-JSON") from None

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict | None:
        """One object, or None when it does not exist."""
        k = KINDS[kind]
        what = _what("get", k, namespace)
        try:
            obj = self._json(what, *self._read(k, name, namespace))
        except NotFound:
            return None
        return strip({"apiVersion": k.api_version, "kind": k.kind, **obj})

    def list(self, kind: str, namespace: str | None = None, label_selector: str | None = None
             ) -> list[dict]:
        """The items, each with apiVersion and kind set (a List's items carry neither)."""
        k = KINDS[kind]
        kwargs = {"label_selector": label_selector} if label_selector else {}
        doc = self._json(_what("list", k, namespace), *self._list(k, namespace), **kwargs)
        return [strip({"apiVersion": k.api_version, "kind": k.kind, **item})
                for item in doc.get("items") or []]

    def _read(self, k: Kind, name: str, namespace: str | None) -> tuple:
        if not k.namespaced:
            return getattr(self.core(), f"read_{_snake(k.kind)}"), name
        api = self._api(GROUP_APIS.get(k.kind, "CoreV1Api"))
        return getattr(api, f"read_namespaced_{_snake(k.kind)}"), name, namespace

    def _list(self, k: Kind, namespace: str | None) -> tuple:
        api = self._api(GROUP_APIS.get(k.kind, "CoreV1Api"))
        if not k.namespaced:
            return (getattr(api, f"list_{_snake(k.kind)}"),)
        return getattr(api, f"list_namespaced_{_snake(k.kind)}"), namespace

    def create_pod(self, pod: dict) -> dict:
        ns = pod["metadata"]["namespace"]
        return self._json(f"create pods in namespace {ns}", self.core().create_namespaced_pod,
                          ns, pod)

    def delete_pod(self, name: str, namespace: str, timeout: float = 10) -> bool:
        """Delete now (grace period 0); False when the pod was already gone."""
        from kubernetes.client import V1DeleteOptions
        try:
            self._call(f"delete pods in namespace {namespace}",
                       self.core().delete_namespaced_pod, name, namespace,
                       body=V1DeleteOptions(grace_period_seconds=0),
                       _request_timeout=timeout, _preload_content=False)
        except NotFound:
            return False
        return True

    def add_ephemeral_container(self, name: str, namespace: str, container: dict) -> dict:
        """`kubectl debug POD`'s request: one more ephemeral container (never removable)."""
        return self._json(f"patch pods/ephemeralcontainers in namespace {namespace}",
                          self.core().patch_namespaced_pod_ephemeralcontainers, name,
                          namespace, {"spec": {"ephemeralContainers": [container]}})

    def pod_log(self, name: str, namespace: str, container: str | None = None) -> str:
        kwargs = {"container": container} if container else {}
        resp = self._call(f"get pods/log in namespace {namespace}",
                          self.core().read_namespaced_pod_log, name, namespace,
                          _preload_content=False, **kwargs)
        return resp.data.decode("utf-8", "replace")


def _snake(kind: str) -> str:
    return {"Service": "service", "Pod": "pod", "Node": "node", "ConfigMap": "config_map",
            "EndpointSlice": "endpoint_slice", "DaemonSet": "daemon_set",
            "NetworkPolicy": "network_policy", "Namespace": "namespace"}[kind]


def _what(verb: str, k: Kind, namespace: str | None) -> str:
    group = k.api_version.rpartition("/")[0]
    resource = f"{k.plural}.{group}" if group else k.plural
    where = f" in namespace {namespace}" if k.namespaced and namespace else ""
    return f"{verb} {resource}{where}"


def api_error(e: Any, what: str) -> ApiError:
    """An ApiException as one line: 403 names the permission, 404 is NotFound."""
    status, message, reason = int(getattr(e, "status", 0) or 0), "", ""
    try:
        body = json.loads(e.body or b"{}")
        message, reason = body.get("message", ""), body.get("reason", "")
    except (TypeError, ValueError):
        message = str(getattr(e, "body", "") or "")[:200]
    if status == 403:
        return Forbidden(f"forbidden: you may not {what} (RBAC); ask for that permission"
                         + (f": {message}" if message else ""), status, message)
    if status == 404:
        return NotFound(message or f"{what}: not found", status, message)
    if status == 401:
        return ApiError(f"unauthorized ({what}): the kubeconfig's credentials were refused; "
                        "log in again", status, message)
    detail = message or getattr(e, "reason", "") or "no message"
    return ApiError(f"{what}: the API server answered {status} {reason}: {detail}".replace(
        "  ", " "), status, message)


# websocket-client's refused upgrade, which kubernetes.stream wraps as ApiException(status=0).
_HANDSHAKE = re.compile(r"Handshake status (\d{3}) ?(.*?)(?: -\+-\+- .*? -\+-\+- (.*))?\Z", re.S)


def stream_error(e: BaseException, what: str) -> ClusterIPError | None:
    """An exec or port-forward failure that is an HTTP answer, as api_error says it; None
    when it is not (a connection or websocket error).

    kubernetes.stream reports every failure as ApiException(status=0): a refused upgrade
    (RBAC's 403 included) only in the reason, as `Handshake status 403 Forbidden -+-+-
    {headers} -+-+- body`."""
    if int(getattr(e, "status", 0) or 0):
        return api_error(e, what)
    m = _HANDSHAKE.match(str(getattr(e, "reason", None) or ""))
    if m is None:
        return None
    body = m.group(3) if m.group(3) not in (None, "None") else None
    return api_error(SimpleNamespace(status=int(m.group(1)), reason=m.group(2).strip(),
                                     body=body), what)
