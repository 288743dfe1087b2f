"""crds/ is generated from the model: a drift fails here."""

from probeset_api.crd import build_crd, crd_yaml
from probeset_api.schema import crd_schema


def test_crd_file_matches_the_model():
    with open("crds/probeset.io_probesets.yaml") as f:
        assert f.read() == crd_yaml(), "regenerate: probeset crd > crds/probeset.io_probesets.yaml"


def test_crd_spec_is_the_models_schema_with_status_subresource():
    version = build_crd()["spec"]["versions"][0]
    assert version["schema"]["openAPIV3Schema"]["properties"]["spec"] == crd_schema()
    assert version["subresources"] == {"status": {}}
    assert [c["name"] for c in version["additionalPrinterColumns"]] == ["Ready", "Probes", "Age", "Message"]
