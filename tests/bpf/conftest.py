import pytest

from tests.support import TARGET_C, Target, bcc_missing_reason

def pytest_collection_modifyitems(items):
    reason = bcc_missing_reason()
    if reason:
        for item in items:
            if "tests/bpf/" in str(item.fspath):
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def target_binary(build_c):
    return build_c("probeset_target", TARGET_C)


@pytest.fixture
def target(target_binary):
    t = Target(target_binary)
    yield t
    t.close()


@pytest.fixture
def run_probeset():
    """Start a ProbeSet from a spec dict; stops it (detaching everything) after the test."""
    from probeset_agent.program import ProbeSetProgram
    from probeset_agent.spec import parse_probeset
    started = []

    def start(probes, name="test", **spec):
        doc = {"apiVersion": "probeset.io/v1alpha1", "kind": "ProbeSet", "metadata": {"name": name},
               "spec": {"probes": probes, "labels": ["node"], **spec}}
        prog = ProbeSetProgram(parse_probeset(doc), node="testnode")
        started.append(prog)
        prog.start()
        return prog
    yield start
    for prog in started:
        prog.stop()
