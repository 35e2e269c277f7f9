"""Snapshot objects, meta and `ip -j` output are checked once, where a Snapshot is made."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from kubectl_clusterip.cli import main
from kubectl_clusterip.model import ClusterIPError
from kubectl_clusterip.snapshot import Snapshot, load_snapshot, node_from_ip_json

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "kind-my-service"
OBJECTS = yaml.safe_load((EXAMPLE / "objects.yaml").read_text())["items"]


def index(kind: str) -> int:
    """The example's object of that kind (the Service is default/my-service)."""
    return next(i for i, o in enumerate(OBJECTS) if o["kind"] == kind and
                o["metadata"]["name"] != "kubernetes")


def edited(kind: str, edit) -> list[dict]:
    objects = copy.deepcopy(OBJECTS)
    edit(objects[index(kind)])
    return objects


SVC, SLICE, POD, NODE = index("Service"), index("EndpointSlice"), index("Pod"), index("Node")


@pytest.mark.parametrize("kind,edit,message", [
    ("Service", lambda o: o["spec"]["ports"][0].update(port="eighty"),
     rf"items\[{SVC}\]\.spec\.ports\[0\]\.port \(Service default/my-service\): expected a port "
     "number from 1 to 65535, not 'eighty'"),
    ("Service", lambda o: o["spec"]["ports"][0].update(port=99999), "not 99999"),
    ("Service", lambda o: o["spec"].update(clusterIP="10.96.0.999"),
     r"spec\.clusterIP \(Service default/my-service\): expected an IP address, \"None\""),
    ("Service", lambda o: o["spec"].update(ports={"port": 80}), r"spec\.ports .*: expected a list"),
    ("Service", lambda o: o["spec"]["ports"][0].update(protocol="tcp"), "TCP, UDP or SCTP"),
    ("Service", lambda o: o["metadata"].update(labels={"a": 1}), r"metadata\.labels\.a"),
    ("EndpointSlice", lambda o: o["endpoints"][0].update(addresses="10.244.1.2"),
     rf"items\[{SLICE}\]\.endpoints\[0\]\.addresses .*: expected a list"),
    ("EndpointSlice", lambda o: o["endpoints"][0]["conditions"].update(ready="yes"),
     r"conditions\.ready .*: expected true or false, not 'yes'"),
    ("Pod", lambda o: o["status"].update(podIP=3), r"status\.podIP .*: expected an IP address"),
    ("Node", lambda o: o["spec"].update(podCIDR="10.244.1.0/33"), r"spec\.podCIDR"),
    ("Node", lambda o: o["metadata"].update(name=7), r"metadata\.name: expected a name, not 7"),
    ("Node", lambda o: o.update(metadata=None), r"metadata\.name: expected a name, not None"),
])
def test_wrong_types_in_objects_are_named_with_their_path(kind, edit, message):
    with pytest.raises(ClusterIPError, match=message) as e:
        Snapshot({}, edited(kind, edit), {}, "snap")
    assert str(e.value).startswith("snap/objects.yaml: items[")
    assert "\n" not in str(e.value) and len(str(e.value)) < 240


def test_live_objects_are_checked_the_same_way():
    with pytest.raises(ClusterIPError, match=r"^context kind-kind: items\[\d+\]\.spec\.ports"):
        Snapshot({}, edited("Service", lambda o: o["spec"].update(ports=[{"port": True}])), {},
                 "context kind-kind")


@pytest.mark.parametrize("items,message", [
    ("x", "items: expected a list of objects, not 'x'"),
    ([1], r"items\[0\]: expected an object, not 1"),
    ([{"kind": ["Service"]}], r"items\[0\]\.kind: expected a kind"),
])
def test_items_that_are_no_objects(items, message):
    with pytest.raises(ClusterIPError, match=message):
        Snapshot({}, items, {}, "snap")


@pytest.mark.parametrize("meta,message", [
    ({"clientNode": ["a"]}, r"snap/snapshot.yaml: clientNode: expected a string"),
    ({"client": {"ip": "me"}}, r"client\.ip: expected an IP address, not 'me'"),
    ({"dns": {"ndots": "five"}}, r"dns\.ndots: expected an integer, not 'five'"),
    ({"dns": {"answers": [{"records": "10.0.0.1"}]}}, r"dns\.answers\[0\]\.records"),
    ([1, 2], "snap/snapshot.yaml: expected a mapping"),
])
def test_meta(meta, message):
    with pytest.raises(ClusterIPError, match=message):
        Snapshot(meta, [], {}, "snap")


@pytest.mark.parametrize("addr,route,message", [
    ('[{"ifname": "eth0", "addr_info": [{"family": "inet", "local": 5}]}]', "[]",
     r"n1/ip-addr.json: \[0\]\.addr_info\[0\]\.local: expected an IP address, not 5"),
    ('[{"addr_info": [{"family": "inet", "local": "10.0.0.1", "prefixlen": 200}]}]', "[]",
     "expected a prefix length"),
    ('[{"addr_info": {"local": "10.0.0.1"}}]', "[]", r"addr_info: expected a list"),
    ("[1]", "[]", r"\[0\]: expected a mapping, not 1"),
    ("[]", '[{"dst": "nowhere"}]', r"n1/ip-route.json: \[0\]\.dst: expected a CIDR"),
    ("[]", '[{"dst": "default", "gateway": "gw"}]', r"\[0\]\.gateway: expected an IP"),
    ("[]", '[{"dst": "default"', "n1/ip-route.json: not ip -j output"),
    ("[" * 5000, "[]", "n1/ip-addr.json: JSON nested too deeply"),
])
def test_ip_json(addr, route, message):
    with pytest.raises(ClusterIPError, match=message):
        node_from_ip_json("n1", addr, route)


def test_the_cli_names_the_file_and_path(tmp_path):
    snap = tmp_path / "snap"
    shutil.copytree(EXAMPLE, snap)
    doc = yaml.safe_load((snap / "objects.yaml").read_text())
    doc["items"][SVC]["spec"]["ports"][0]["port"] = "x" * 500
    (snap / "objects.yaml").write_text(yaml.safe_dump(doc))
    r = CliRunner().invoke(main, ["trace", "default/my-service", "--snapshot", str(snap)])
    assert r.exit_code == 2 and r.stderr.count("\n") == 1, r.output
    assert f"objects.yaml: items[{SVC}].spec.ports[0].port (Service default/my-service)" \
        in r.stderr and len(r.stderr) < 300
    (snap / "objects.yaml").write_text(yaml.safe_dump({"items": OBJECTS}))
    addrs = json.loads((snap / "nodes" / "kind-worker" / "ip-addr.json").read_text())
    addrs[0]["addr_info"][0]["prefixlen"] = "8"
    (snap / "nodes" / "kind-worker" / "ip-addr.json").write_text(json.dumps(addrs))
    r = CliRunner().invoke(main, ["trace", "default/my-service", "--snapshot", str(snap)])
    assert r.exit_code == 2 and "kind-worker/ip-addr.json: [0].addr_info[0].prefixlen: " \
        "expected a prefix length from 0 to 128, not '8'" in r.stderr, r.output


def test_the_bundled_snapshots_pass():
    load_snapshot(str(EXAMPLE))
    for case in (ROOT / "tests" / "data" / "snapshots").iterdir():
        snap = load_snapshot(str(case))
        for node in snap.nodes.values():
            node.node()


def test_null_in_ip_json_is_a_missing_field():
    """Found by fuzzing: an explicit null reached the diagnosis as a None device or route."""
    node = node_from_ip_json(
        "n1", '[{"ifname": null, "addr_info": [{"family": "inet", "local": "10.0.0.2", '
              '"prefixlen": null}]}]',
        '[{"dst": null, "dev": null, "type": null, "gateway": "10.0.0.1"}]')
    assert [(a.ip, a.prefixlen, a.dev) for a in node.addresses] == [("10.0.0.2", 32, "")]
    assert [(r.dst, r.dev, r.gateway) for r in node.routes] == [("default", "", "10.0.0.1")]
