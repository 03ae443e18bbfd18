"""Golden dumps: tests/golden/NAME.Dockerfile -> NAME.txt (regenerate with tests/golden/regen.py)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

GOLDEN = Path(__file__).parent / "golden"
_spec = importlib.util.spec_from_file_location("golden_regen", GOLDEN / "regen.py")
assert _spec and _spec.loader
regen = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(regen)


@pytest.mark.parametrize("dockerfile", sorted(GOLDEN.glob("*.Dockerfile")), ids=lambda p: p.stem)
def test_golden(dockerfile: Path) -> None:
    expected = (GOLDEN / (dockerfile.name.removesuffix(".Dockerfile") + ".txt")).read_text()
    assert regen.golden_text(dockerfile) == expected, "run tests/golden/regen.py and review the diff"


def test_every_golden_has_a_dump() -> None:
    names = {p.name.removesuffix(".Dockerfile") for p in GOLDEN.glob("*.Dockerfile")}
    assert len(names) >= 5
    assert names == {p.stem for p in GOLDEN.glob("*.txt")}
