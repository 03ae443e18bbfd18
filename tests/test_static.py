"""Static checks: the annotations are checked by mypy, and pyflakes finds no unused imports or
undefined names (both are test dependencies, installed by the suite)."""
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_mypy_finds_no_type_errors():
    p = subprocess.run([sys.executable, "-m", "mypy", "--ignore-missing-imports", "--no-incremental",
                        "builder", "frontend"], cwd=REPO, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr


def test_pyflakes_is_clean():
    p = subprocess.run([sys.executable, "-m", "pyflakes", "builder", "frontend"], cwd=REPO,
                       capture_output=True, text=True)
    assert p.returncode == 0 and not p.stdout, p.stdout + p.stderr
