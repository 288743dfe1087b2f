import pytest

from probeset_agent.attribution import cgroup2_root
from tests.support import TARGET_C, FakePods, Target, bcc_missing_reason

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
def fake_pods():
    """Kubelet-named cgroups for fake pods (tests.support.FakePods), removed afterwards."""
    root = cgroup2_root()
    if root is None:
        pytest.skip("no cgroup v2 hierarchy mounted (bpf_get_current_cgroup_id needs one)")
    pods = FakePods(root)
    yield pods
    pods.cleanup()


@pytest.fixture(scope="session")
def lang_binary(build_c):
    """The language tests' program (tests/bpf/lang.py)."""
    from tests.bpf.lang import LANG_C
    return build_c("probeset_lang", LANG_C)


@pytest.fixture
def lang(lang_binary, targets):
    return targets(lang_binary)
