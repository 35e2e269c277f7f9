"""kubeconfig loading follows kubectl, not the Python client: merge and context choice."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kubectl_clusterip.cluster.kubeconfig import (
    ConnectionFlags,
    client_configuration,
    load,
    merge,
    parse_timeout,
)
from kubectl_clusterip.model import ClusterIPError


def write(path: Path, current: str | None, contexts: dict, clusters: dict,
          users: dict | None = None) -> str:
    doc = {"apiVersion": "v1", "kind": "Config",
           "contexts": [{"name": n, "context": c} for n, c in contexts.items()],
           "clusters": [{"name": n, "cluster": c} for n, c in clusters.items()],
           "users": [{"name": n, "user": u} for n, u in (users or {}).items()]}
    if current:
        doc["current-context"] = current
    path.write_text(yaml.safe_dump(doc))
    return str(path)


@pytest.fixture
def two_files(tmp_path):
    (tmp_path / "b").mkdir()
    a = write(tmp_path / "a", None,
              {"dev": {"cluster": "c1", "user": "u1", "namespace": "team"}},
              {"c1": {"server": "https://a.example:6443", "certificate-authority": "ca.crt"}},
              {"u1": {"token": "from-a"}})
    b = write(tmp_path / "b" / "config", "prod",
              {"prod": {"cluster": "c2", "user": "u1"}, "dev": {"cluster": "c2"}},
              {"c1": {"server": "https://b.example"}, "c2": {"server": "http://127.0.0.1:1",
                                                             "certificate-authority": "ca.crt"}},
              {"u1": {"token": "from-b"}, "u2": {"token": "two"}})
    return a, b


def test_current_context_is_the_first_file_that_sets_one(two_files):
    a, b = two_files
    kc = load(ConnectionFlags(), {"KUBECONFIG": f"{a}:{b}"})
    assert kc.context == "prod"  # a sets none, b does
    c = write(Path(a).with_name("c"), "dev", {}, {})
    assert load(ConnectionFlags(), {"KUBECONFIG": f"{c}:{b}:{a}"}).context == "dev"


def test_first_file_wins_per_name_and_paths_are_relative_to_their_file(two_files):
    a, b = two_files
    doc = merge([a, b])
    c1 = next(c for c in doc["clusters"] if c["name"] == "c1")["cluster"]
    assert c1["server"] == "https://a.example:6443"
    assert c1["certificate-authority"] == str(Path(a).parent.resolve() / "ca.crt")
    c2 = next(c for c in doc["clusters"] if c["name"] == "c2")["cluster"]
    assert c2["certificate-authority"] == str(Path(b).parent.resolve() / "ca.crt")
    assert [u["user"]["token"] for u in doc["users"] if u["name"] == "u1"] == ["from-a"]
    dev = next(c for c in doc["contexts"] if c["name"] == "dev")["context"]
    assert dev["cluster"] == "c1"  # not b's dev


def test_namespace_from_flag_then_context_then_default(two_files):
    a, b = two_files
    env = {"KUBECONFIG": f"{a}:{b}"}
    assert load(ConnectionFlags(context="dev"), env).namespace == "team"
    assert load(ConnectionFlags(context="dev", namespace="x"), env).namespace == "x"
    assert load(ConnectionFlags(), env).namespace == "default"


def test_cluster_and_user_flags_override_the_context(two_files):
    a, b = two_files
    kc = load(ConnectionFlags(context="prod", user="u2"), {"KUBECONFIG": f"{a}:{b}"})
    conf = client_configuration(kc)
    assert conf.host == "http://127.0.0.1:1"
    assert conf.api_key["BearerToken"] == "Bearer two"
    kc = load(ConnectionFlags(context="prod", cluster="c1"), {"KUBECONFIG": f"{a}:{b}"})
    assert kc.doc["contexts"][0]["context"]["cluster"] == "c1"


def test_explicit_kubeconfig_beats_the_environment(two_files, tmp_path):
    a, b = two_files
    assert load(ConnectionFlags(kubeconfig=b), {"KUBECONFIG": a}).files == [b]


@pytest.mark.parametrize("flags,env,message", [
    (ConnectionFlags(context="nope"), "ab", 'context "nope" not found'),
    (ConnectionFlags(user="ghost"), "ab", 'user "ghost" of context "prod" not found'),
    (ConnectionFlags(kubeconfig="/nonexistent/kc"), "ab", "--kubeconfig /nonexistent/kc"),
    (ConnectionFlags(), "a", "no current context"),
    (ConnectionFlags(), "missing", "none of these files exist"),
])
def test_errors_are_one_line(two_files, flags, env, message):
    a, b = two_files
    paths = {"ab": f"{a}:{b}", "a": a, "missing": "/nonexistent/1:/nonexistent/2"}[env]
    with pytest.raises(ClusterIPError, match=message):
        load(flags, {"KUBECONFIG": paths})


def test_home_kubeconfig_is_the_fallback(tmp_path):
    with pytest.raises(ClusterIPError, match="no kubeconfig"):
        load(ConnectionFlags(), {"HOME": str(tmp_path)})
    (tmp_path / ".kube").mkdir()
    write(tmp_path / ".kube" / "config", "x", {"x": {"cluster": "c"}},
          {"c": {"server": "http://127.0.0.1:1"}})
    assert load(ConnectionFlags(), {"HOME": str(tmp_path)}).context == "x"


def test_unreadable_kubeconfig(tmp_path):
    (tmp_path / "kc").write_text("clusters: [\n")
    with pytest.raises(ClusterIPError, match="not valid YAML"):
        load(ConnectionFlags(kubeconfig=str(tmp_path / "kc")), {})


@pytest.mark.parametrize("value,seconds", [(None, None), ("0", None), ("30", 30.0),
                                           ("30s", 30.0), ("2m", 120.0), ("500ms", 0.5)])
def test_request_timeout(value, seconds):
    assert parse_timeout(value) == seconds


def test_request_timeout_rejects_nonsense():
    with pytest.raises(ClusterIPError, match="--request-timeout soon"):
        parse_timeout("soon")


@pytest.mark.parametrize("text,message", [
    ("clusters: true\n", r"kc: clusters: expected a list of named entries, not True"),
    ("contexts: {a: 1}\n", r"kc: contexts: expected a list"),
    ("users: [3]\n", r"kc: users\[0\]: expected a mapping with name and user, not 3"),
    ("clusters: [{name: [x]}]\n", r"kc: clusters\[0\]\.name: expected a name"),
    ("clusters: [{name: c, cluster: yes}]\n", r"kc: clusters\[0\]\.cluster: expected a mapping"),
    ("current-context: 7\n", r"kc: current-context: expected a name, not 7"),
    ("a: [" * 120 + "\n", r"kc: nested deeper than 100 levels"),
    ("current-context: x\ncontexts: [{name: x, context: {cluster: c}}]\n"
     "clusters: [{name: c, cluster: {server: 'not a url'}}]\n",
     r"kc: clusters\[0\]\.cluster\.server: not a url is not a URL"),
    ("current-context: x\ncontexts: [{name: x, context: {cluster: c}}]\n"
     "clusters: [{name: c, cluster: {server: 'https://h:99999'}}]\n", r"is not a URL"),
    ("current-context: x\ncontexts: [{name: x, context: {cluster: c}}]\n"
     "clusters: [{name: c, cluster: {}}]\n", r"kc: clusters\[0\]\.cluster\.server: missing"),
    ("current-context: x\ncontexts: [{name: x, context: {cluster: c, user: u}}]\n"
     "clusters: [{name: c, cluster: {server: 'https://h'}}]\n"
     "users: [{name: u, user: {exec: {apiVersion: client.authentication.k8s.io/v1}}}]\n",
     r"kc: users\[0\]\.user\.exec\.command: missing"),
    ("current-context: x\ncontexts: [{name: x, context: {cluster: c, user: u}}]\n"
     "clusters: [{name: c, cluster: {server: 'https://h'}}]\n"
     "users: [{name: u, user: {token: 12}}]\n", r"kc: users\[0\]\.user\.token: expected a string"),
])
def test_wrong_kubeconfig_shapes_are_one_line(tmp_path, monkeypatch, text, message):
    monkeypatch.chdir(tmp_path)
    Path("kc").write_text(text)
    with pytest.raises(ClusterIPError, match=message) as e:
        load(ConnectionFlags(kubeconfig="kc"), {})
    assert "\n" not in str(e.value) and len(str(e.value)) < 200


def test_missing_files_in_a_kubeconfig_list_are_skipped_like_kubectl(two_files, tmp_path):
    a, b = two_files
    kc = load(ConnectionFlags(), {"KUBECONFIG": f"/nonexistent/x:{a}:{tmp_path}:{b}"})
    assert kc.files == [a, b] and kc.context == "prod"


def test_special_file_as_kubeconfig_is_refused(tmp_path):
    import os
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(ClusterIPError, match="not a regular file"):
        load(ConnectionFlags(kubeconfig=str(tmp_path / "fifo")), {})
    with pytest.raises(ClusterIPError, match="not a regular file"):
        load(ConnectionFlags(kubeconfig="/dev/zero"), {})


def test_the_client_never_configures_the_root_logger(tmp_path, capfd):
    """An exec plugin that fails makes the client call logging.error() on the root logger,
    which would install a stderr handler and let every urllib3 retry warning through."""
    import logging
    kc = write(tmp_path / "kc", "x", {"x": {"cluster": "c", "user": "u"}},
               {"c": {"server": "http://127.0.0.1:1"}},
               {"u": {"exec": {"apiVersion": "client.authentication.k8s.io/v1",
                               "command": "false", "interactiveMode": "Never"}}})
    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers = []
    try:
        try:
            client_configuration(load(ConnectionFlags(kubeconfig=kc), {}))
        except ClusterIPError:
            pass
        logging.getLogger("urllib3.connectionpool").warning("Retrying (Retry(total=2))")
        assert not [h for h in root.handlers if isinstance(h, logging.StreamHandler)]
    finally:
        root.handlers = saved
    err = capfd.readouterr().err
    assert "Retrying" not in err and "exec:" not in err
