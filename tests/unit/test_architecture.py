"""docs/architecture.md names real files, and the agent and operator packages stay apart."""

import ast
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[2]
PACKAGES = {"api": "probeset_api", "agent": "probeset_agent", "operator": "probeset_operator", "cli": "probeset_cli"}


def test_every_file_the_architecture_page_names_exists():
    text = (ROOT / "docs/architecture.md").read_text()
    named = set(re.findall(r"\b([a-z_]+\.py)\b", text))
    files = {p.name for root in PACKAGES for p in (ROOT / root).rglob("*.py")}
    tests = {p.name for p in (ROOT / "tests").rglob("*.py")}
    assert named, "the page names no files"
    assert named - files - tests == set()
    # ...and every module of the agent, operator and API is on the page.
    modules = {p.name for root in ("api", "agent", "operator") for p in (ROOT / root).rglob("*.py")}
    assert modules - named == set()


def imports_of(package_dir: pathlib.Path) -> set[str]:
    found = set()
    for path in package_dir.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return found


def test_agent_and_operator_do_not_import_each_other():
    assert "probeset_operator" not in imports_of(ROOT / "agent")
    assert "probeset_agent" not in imports_of(ROOT / "operator")
    assert imports_of(ROOT / "api") & set(PACKAGES.values()) <= {"probeset_api"}


def test_test_file_names_are_unique_across_tiers():
    """pytest imports test modules by their base name (rootdir-relative, no packages): two tiers'
    test_x.py cannot be collected in one run, which is how the whole suite runs (scripts/test)."""
    names = [p.name for p in (ROOT / "tests").rglob("test_*.py")]
    assert sorted({n for n in names if names.count(n) > 1}) == []
