"""Special, huge and deeply nested inputs end in one line and exit 2, without hanging."""

from __future__ import annotations

import os
import shutil
import signal
import tracemalloc
from pathlib import Path

import pytest
from click.testing import CliRunner

from kubectl_clusterip.cli import main
from kubectl_clusterip.model import ClusterIPError
from kubectl_clusterip.reads import load_json, load_yaml, read_text

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "kind-my-service"


@pytest.fixture(autouse=True)
def deadline():
    """A read that blocks (a FIFO without a writer) fails the test instead of hanging it."""
    def expired(*_):
        raise TimeoutError("the read blocked")
    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def run(*args: str, input: bytes | str | None = None):
    r = CliRunner().invoke(main, list(args), input=input)
    assert not isinstance(r.exception, TimeoutError)
    return r


def one_line_error(r, fragment: str) -> None:
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], r.output


@pytest.fixture
def snapshot(tmp_path):
    snap = tmp_path / "snap"
    shutil.copytree(EXAMPLE, snap)
    return snap


def test_fifo_as_a_dump(tmp_path):
    os.mkfifo(tmp_path / "fifo")  # no writer: opening it for reading would block
    one_line_error(run("rules", "--rules-file", str(tmp_path / "fifo")),
                   "not a regular file (a FIFO)")


def test_device_as_a_dump():
    one_line_error(run("rules", "--rules-file", "/dev/zero"),
                   "/dev/zero: not a regular file (a character device)")


def test_zeros_on_stdin_stop_at_the_first_chunk():
    r = run("rules", "--rules-file", "-", input=b"\0" * (4 << 20))
    one_line_error(r, "-: binary data")


def test_stdin_is_capped(monkeypatch):
    monkeypatch.setattr("kubectl_clusterip.reads.MAX_INPUT_BYTES", 1 << 20)
    r = run("rules", "--rules-file", "-", input="# x\n" * (1 << 19))
    one_line_error(r, "-: larger than the 1 MiB limit")


def test_a_sparse_file_is_refused_by_its_size_without_being_read(tmp_path):
    big = tmp_path / "sparse.txt"
    with open(big, "wb") as f:
        f.truncate(1536 << 20)  # 1.5 GB of holes: no disk used
    tracemalloc.start()
    r = run("rules", "--rules-file", str(big))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    one_line_error(r, "1536 MiB, larger than the 512 MiB limit")
    assert peak < 16 << 20


@pytest.mark.parametrize("special", ["fifo", "/dev/zero"])
def test_special_file_as_objects_yaml(snapshot, special):
    (snapshot / "objects.yaml").unlink()
    if special == "fifo":
        os.mkfifo(snapshot / "objects.yaml")
    else:
        (snapshot / "objects.yaml").symlink_to(special)
    r = run("trace", "default/my-service", "--snapshot", str(snapshot))
    one_line_error(r, "objects.yaml: not a regular file")


def test_fifo_as_a_node_file(snapshot):
    os.mkfifo(snapshot / "nodes" / "kind-worker" / "conntrack.txt")
    one_line_error(run("trace", "default/my-service", "--snapshot", str(snapshot)),
                   "conntrack.txt: not a regular file (a FIFO)")


def test_deep_yaml_objects(snapshot):
    (snapshot / "objects.yaml").write_text("items:\n" + "- " * 5000 + "x\n")
    one_line_error(run("trace", "default/my-service", "--snapshot", str(snapshot)),
                   "objects.yaml: nested deeper than 100 levels")
    (snapshot / "objects.yaml").write_text("items: " + "[" * 5000 + "]" * 5000 + "\n")
    one_line_error(run("trace", "default/my-service", "--snapshot", str(snapshot)),
                   "objects.yaml: nested deeper than 100 levels")


def test_yaml_that_is_no_snapshot(snapshot):
    (snapshot / "snapshot.yaml").write_text("!!python/object/apply:os.system [ls]\n")
    one_line_error(run("trace", "default/my-service", "--snapshot", str(snapshot)),
                   "unsupported YAML tag")
    (snapshot / "snapshot.yaml").write_text("a: [1,\n")
    one_line_error(run("trace", "default/my-service", "--snapshot", str(snapshot)),
                   "snapshot.yaml: not valid YAML (line 2, column 1)")


def test_yaml_aliases_cannot_expand_past_the_document():
    laughs = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{k}: &{k} [{', '.join(['*' + p] * 9)}]\n" for p, k in zip("abcdefgh", "bcdefghi"))
    with pytest.raises(ClusterIPError, match="aliases expand beyond the document"):
        load_yaml(laughs, "laughs")
    assert load_yaml("a: &x {b: 1}\nc: *x\nd: {<<: *x, e: 2}\n", "ok") == {
        "a": {"b": 1}, "c": {"b": 1}, "d": {"b": 1, "e": 2}}


def test_yaml_loader_matches_safe_load_on_the_bundled_snapshot():
    import yaml
    for f in ("objects.yaml", "snapshot.yaml"):
        text = (EXAMPLE / f).read_text()
        assert load_yaml(text, f) == yaml.safe_load(text)


def test_deep_json():
    with pytest.raises(ClusterIPError, match=r"x.json: JSON nested deeper than 100 levels"):
        load_json("[" * 100_000 + "]" * 100_000, "x.json")
    with pytest.raises(ClusterIPError, match="nested deeper than 100 levels"):
        load_json("[" * 200 + "]" * 200, "x.json")
    assert load_json('{"a": [[1]]}', "x.json") == {"a": [[1]]}


def test_directory_and_missing_file():
    with pytest.raises(ClusterIPError, match="is a directory"):
        read_text(str(ROOT))
    with pytest.raises(ClusterIPError, match="no such file"):
        read_text(str(ROOT / "nonexistent"))


def test_completion_over_a_snapshot_with_a_fifo_offers_nothing(snapshot):
    from kubectl_clusterip.completion.sources import SnapshotSource
    (snapshot / "objects.yaml").unlink()
    os.mkfifo(snapshot / "objects.yaml")
    (snapshot / "snapshot.yaml").write_text("namespace: [x]\n")
    src = SnapshotSource(snapshot)
    assert src.objects == [] and src.namespace == "default"
    assert src.names("nodes", None) == ["kind-worker"]
