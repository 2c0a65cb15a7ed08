"""Every system that is not 'not yet' has a docs page, a recipe with a citation, and tests of its module."""
from pathlib import Path

import pytest

from plmkit.reproduce.registry import RECIPES, _load_builtin
from plmkit.systems import SYSTEMS

ROOT = Path(__file__).resolve().parents[2]
STARTED = [s for s in SYSTEMS.values() if not s.status.startswith("not yet")]


def test_statuses_use_the_documented_words():
    for s in SYSTEMS.values():
        assert s.status.split(":")[0] in ("implemented", "partial", "not yet"), s.key


@pytest.mark.parametrize("system", STARTED, ids=lambda s: s.key)
def test_started_systems_have_docs_recipe_citation_and_tests(system):
    _load_builtin()
    assert (ROOT / system.docs).exists(), f"{system.key}: missing {system.docs}"
    recipes = [r for r in RECIPES.values() if r.system == system.key]
    assert recipes, f"{system.key}: no reproduction recipe"
    assert all(r.citation and r.paper_claim for r in recipes)
    module = system.entry_point.rsplit(".", 1)[0]
    tests = "\n".join(p.read_text() for p in (ROOT / "tests").rglob("test_*.py"))
    assert module in tests, f"{system.key}: no test imports {module}"
