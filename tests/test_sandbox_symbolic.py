"""Symbolic --chmod modes, as BuildKit v0.25 applies them to each entry's own mode."""
import pytest

from builder.sandbox.symbolic import apply, valid


@pytest.mark.parametrize("spec,mode,is_dir,want", [
    ("u+x", 0o644, False, 0o744), ("u=rwx,go=rx", 0o644, False, 0o755), ("a=r", 0o644, False, 0o444),
    ("ug=rw,o=", 0o755, True, 0o660), ("u=rwxs,g=x,o=t", 0o644, False, 0o4710),
    ("o=,ug=rwx", 0o644, False, 0o770), ("go=rX", 0o600, False, 0o644), ("go=rX", 0o700, False, 0o755),
    ("go=rX", 0o600, True, 0o655), ("g=u", 0o640, False, 0o660), ("u+x-w", 0o644, False, 0o544),
    ("+t", 0o755, True, 0o1755), ("g+s", 0o755, True, 0o2755), ("u-s", 0o4755, False, 0o755),
])
def test_apply(spec, mode, is_dir, want):
    assert apply(spec, mode, is_dir=is_dir) == want


def test_invalid_specs_are_refused():
    for spec in ("", "u+q", "u+x,", "x+u", "ug"):
        assert not valid(spec)
        with pytest.raises(ValueError):
            apply(spec, 0o644, is_dir=False)
