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
