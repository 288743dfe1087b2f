"""crds/ is generated from the model: a drift fails here. The CRD itself is checked against facts
written out below (the model's patterns, enums, defaults and the status agents write), not against
the model's own output."""

import re

from probeset_api.crd import build_crd, build_crds, build_node_crd, crd_file, crd_yaml


def test_crd_files_match_the_model():
    for crd in build_crds():
        with open(f"crds/{crd_file(crd)}") as f:
            assert f.read() == crd_yaml(crd), "regenerate: probeset crd --out crds"


def _version() -> dict:
    (version,) = build_crd()["spec"]["versions"]
    return version


def _root() -> dict:
    return _version()["schema"]["openAPIV3Schema"]


def test_crd_has_status_subresource_and_printer_columns():
    version = _version()
    assert version["subresources"] == {"status": {}}
    assert [c["name"] for c in version["additionalPrinterColumns"]] == ["Ready", "Probes", "Age", "Message"]
    assert _root()["required"] == ["spec"]


def test_crd_spec_carries_the_models_patterns_enums_and_defaults():
    spec = _root()["properties"]["spec"]
    assert spec["type"] == "object" and spec["required"] == ["probes"]
    probes = spec["properties"]["probes"]
    assert (probes["type"], probes["minItems"], probes["maxItems"]) == ("array", 1, 64)
    probe = probes["items"]
    assert probe["type"] == "object" and probe["required"] == ["name"]
    fields = probe["properties"]
    assert set(fields) == {"name", "kprobe", "kretprobe", "uprobe", "uretprobe", "tracepoint", "latency",
                           "bucketsPerPowerOfTwo", "groupBy", "pid", "comm", "maxActive", "attach", "maxFunctions",
                           "value", "aggregate", "unit", "retvalLabel", "filter", "start", "end", "labelsFrom",
                           "maxPending", "maxAgeSeconds", "usdt"}
    assert fields["usdt"]["pattern"].endswith(r":([A-Za-z_][A-Za-z0-9_]{0,127}):([A-Za-z_][A-Za-z0-9_]{0,127})$")
    assert fields["start"]["required"] == fields["end"]["required"] == ["key"]
    assert fields["start"]["properties"]["key"]["maxItems"] == 2
    assert (fields["maxPending"]["maximum"], fields["maxPending"]["default"]) == (65536, 10240)
    assert (fields["maxAgeSeconds"]["maximum"], fields["maxAgeSeconds"]["default"]) == (3600, 10)
    assert (fields["labelsFrom"]["enum"], fields["labelsFrom"]["default"]) == (["start", "end"], "start")
    flt = fields["filter"]["properties"]
    assert flt["op"]["enum"] == ["==", "!=", "<", "<=", ">", ">=", "&"]
    assert flt["value"] == {"x-kubernetes-int-or-string": True, "description": flt["value"]["description"]}
    assert flt["all"]["maxItems"] == flt["any"]["maxItems"] == 8
    inner = flt["all"]["items"]["properties"]["any"]["items"]["properties"]
    assert "all" not in inner and "any" not in inner     # two levels of groups, no more
    assert (fields["aggregate"]["enum"], fields["aggregate"]["default"]) == (["sum", "histogram"], "sum")
    assert fields["unit"]["enum"] == ["bytes", "seconds"] and "default" not in fields["unit"]
    assert (fields["retvalLabel"]["enum"], fields["retvalLabel"]["default"]) == (["number", "errno"], "number")
    assert fields["name"]["pattern"] == r"^[a-z][a-z0-9_]{0,62}$"
    assert fields["kprobe"]["pattern"] == fields["kretprobe"]["pattern"] == r"^[A-Za-z0-9_.*?]{1,128}$"
    assert fields["uprobe"]["pattern"] == fields["uretprobe"]["pattern"] == (
        r"^((/[A-Za-z0-9_+.\-]+)+|[A-Za-z0-9_+][A-Za-z0-9_+.\-]{0,127}):([A-Za-z_*?][A-Za-z0-9_.@$*?]{0,255})$")
    assert fields["tracepoint"]["pattern"] == r"^[A-Za-z0-9_*?]{1,64}:[A-Za-z0-9_*?]{1,128}$"
    assert fields["comm"]["pattern"] == r"^[^\x00-\x1f\x7f]{1,15}$"
    assert fields["groupBy"]["maxItems"] == 4
    assert fields["groupBy"]["items"] == {"type": "string", "pattern": r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"}
    assert fields["latency"]["type"] == "boolean" and fields["latency"]["default"] is False
    assert (fields["bucketsPerPowerOfTwo"]["enum"], fields["bucketsPerPowerOfTwo"]["default"]) == ([1, 2, 4], 1)
    assert (fields["attach"]["enum"], fields["attach"]["default"]) == (
        ["auto", "kprobe", "fentry", "tracepoint", "raw_tracepoint"], "auto")
    assert (fields["pid"]["minimum"], fields["pid"]["maximum"]) == (1, 4194304)
    assert (fields["maxActive"]["minimum"], fields["maxActive"]["maximum"]) == (1, 4096)
    assert (fields["maxFunctions"]["minimum"], fields["maxFunctions"]["maximum"],
            fields["maxFunctions"]["default"]) == (1, 1000, 128)
    assert "default" not in fields["pid"] and "default" not in fields["maxActive"]

    top = spec["properties"]
    assert top["labels"]["items"]["enum"] == ["node", "namespace", "pod", "container", "comm"]
    assert top["labels"]["default"] == ["node", "namespace", "pod", "container"]
    assert (top["maxSeriesPerProbe"]["minimum"], top["maxSeriesPerProbe"]["maximum"],
            top["maxSeriesPerProbe"]["default"]) == (1, 100000, 5000)
    assert (top["scope"]["enum"], top["scope"]["default"]) == (["Namespace", "Node"], "Namespace")
    assert top["podSelector"]["properties"]["matchExpressions"]["items"]["properties"]["operator"]["enum"] == [
        "In", "NotIn", "Exists", "DoesNotExist"]


def test_crd_patterns_accept_and_reject_what_the_api_server_should():
    # The API server searches with these patterns (ECMA syntax, anchored by ^...$ themselves).
    fields = _root()["properties"]["spec"]["properties"]["probes"]["items"]["properties"]

    def ok(field, value):
        return re.search(fields[field]["pattern"], value) is not None
    assert ok("uprobe", "libc:getaddrinfo") and ok("uprobe", "/usr/bin/app:handle_*")
    assert not ok("uprobe", "libc:getaddrinfo; rm") and not ok("uprobe", "getaddrinfo")
    assert ok("kprobe", "vfs_read") and ok("kprobe", "tcp_*") and not ok("kprobe", "vfs read")
    assert ok("tracepoint", "net:net_dev_xmit") and not ok("tracepoint", "net_dev_xmit")
    assert ok("name", "dns_latency") and not ok("name", "DNS") and not ok("name", "a" * 64)
    assert ok("comm", "nginx") and not ok("comm", "x" * 16) and not ok("comm", "a\nb")


def _named_fields(node: dict, path: str):
    """(path, schema) of every named property under node, through arrays and maps."""
    for name, sub in node.get("properties", {}).items():
        yield f"{path}.{name}", sub
        yield from _named_fields(sub, f"{path}.{name}")
    for key, suffix in (("items", "[]"), ("additionalProperties", ".*")):
        if isinstance(node.get(key), dict):
            yield from _named_fields(node[key], path + suffix)


def test_every_spec_and_status_field_is_described_and_no_hint_leaks():
    root = _root()
    fields = [*_named_fields(root["properties"]["spec"], "spec"), *_named_fields(root["properties"]["status"],
                                                                                 "status")]
    assert len(fields) > 50
    undescribed = [path for path, sub in fields if not sub.get("description")]
    assert undescribed == []

    def private_keys(node, path="$"):
        if isinstance(node, dict):
            for k, v in node.items():
                if k.startswith("x-probeset-"):
                    yield f"{path}.{k}"
                yield from private_keys(v, f"{path}.{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                yield from private_keys(v, f"{path}[{i}]")
    assert list(private_keys(build_crd())) == []
    assert "x-probeset-" not in crd_yaml()


def test_status_schema_has_what_agents_and_the_operator_write():
    status = _root()["properties"]["status"]["properties"]
    (node_version,) = build_node_crd()["spec"]["versions"]
    node_status = node_version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    assert set(node_status) == {"summary", "sets"}
    report = node_status["sets"]["additionalProperties"]
    types = {name: sub["type"] for name, sub in report["properties"].items()}
    assert types == {"generation": "integer", "attached": "integer", "total": "integer", "updated": "string",
                     "failed": "array", "reason": "string"}
    failed = report["properties"]["failed"]["items"]["properties"]
    assert {name: sub["type"] for name, sub in failed.items()} == {
        "name": "string", "attached": "boolean", "attachedVia": "string", "functions": "integer", "error": "string"}
    assert set(status) == {"observedGeneration", "message", "probes", "nodes", "conditions", "failedNodes"}
    assert set(status["nodes"]["properties"]) == {"desired", "ready", "failing", "summary", "declined"}
    assert status["failedNodes"]["maxItems"] == 10
    assert {name: sub["type"] for name, sub in status["failedNodes"]["items"]["properties"].items()} == {
        "node": "string", "attached": "integer", "total": "integer", "reason": "string", "failed": "array"}
    condition = status["conditions"]["items"]
    assert condition["required"] == ["type", "status"]
    assert condition["properties"]["status"]["enum"] == ["True", "False", "Unknown"]
    assert condition["properties"]["lastTransitionTime"]["format"] == "date-time"
