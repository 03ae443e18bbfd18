"""frontend/dockerignore.py: which file is read and how patterns are cleaned."""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import shared_path
from frontend.dockerignore import go_clean, parse_dockerignore, read_dockerignore


@pytest.mark.parametrize("path,expected", [
    ("", "."), ("a/b/../c", "a/c"), ("//a//b/", "/a/b"), ("./a/./b", "a/b"), ("../a", "../a"),
    ("/../a", "/a"), ("a/..", "."), ("**/*.o", "**/*.o"),
])
def test_go_clean(path: str, expected: str) -> None:
    assert go_clean(path) == expected


def test_parse_patterns() -> None:
    text = ("\ufeff# comment line\n"
            "*.key\n"
            "   \n"
            "  logs/*.log  \n"
            "!logs/keep.log\n"
            "! spaced/exception \n"
            " # not a comment (leading space)\n"
            "/abs/path/\n"
            "./rel/../other\n"
            "/\n")
    assert parse_dockerignore(text) == ("*.key", "logs/*.log", "!logs/keep.log", "!spaced/exception",
                                        "# not a comment (leading space)", "abs/path", "other", "/")


def test_conformance_dockerignore() -> None:
    p = shared_path("conformance", "cases", "dockerignore-patterns")
    assert read_dockerignore(p, "Dockerfile") == ("*.key", "logs/*.log", "!logs/keep.log", "**/*.o", "build",
                                                  "docs/**/secret.md", "vcs")


def test_dockerfile_specific_file_wins(tmp_path: Path) -> None:
    (tmp_path / ".dockerignore").write_text("generic\n")
    assert read_dockerignore(tmp_path, "Dockerfile") == ("generic",)
    (tmp_path / "build").mkdir()
    (tmp_path / "build" / "app.Dockerfile").write_text("FROM a\n")
    (tmp_path / "build" / "app.Dockerfile.dockerignore").write_text("specific\n")
    assert read_dockerignore(tmp_path, "build/app.Dockerfile") == ("specific",)
    assert read_dockerignore(tmp_path, str(tmp_path / "build" / "app.Dockerfile")) == ("specific",)
    assert read_dockerignore(tmp_path, "other.Dockerfile") == ("generic",)


def test_no_dockerignore(tmp_path: Path) -> None:
    assert read_dockerignore(tmp_path, "Dockerfile") == ()
