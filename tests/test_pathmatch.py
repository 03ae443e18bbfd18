"""Table tests for builder.layer.pathmatch (moby patternmatcher semantics)."""
from __future__ import annotations

import pytest

from builder.layer.pathmatch import PathMatcher

CASES = [
    # patterns, path, excluded?
    (["*.md"], "README.md", True),
    (["*.md"], "docs/README.md", False),
    (["**/*.md"], "docs/a/README.md", True),
    (["**/*.md"], "README.md", True),
    (["docs/**/secret.md"], "docs/secret.md", True),
    (["docs/**/secret.md"], "docs/internal/secret.md", True),
    (["docs/**/secret.md"], "docs/readme.md", False),
    (["build"], "build", True),
    (["build"], "build/out/x.bin", True),       # a dir pattern excludes everything below
    (["build"], "builder", False),
    (["/build"], "build/x", True),
    (["./build/"], "build/x", True),
    (["logs/*.log"], "logs/a.log", True),
    (["logs/*.log"], "logs/nested/deep.log", False),
    (["logs/*.log", "!logs/keep.log"], "logs/keep.log", False),
    (["logs/*.log", "!logs/keep.log"], "logs/a.log", True),
    (["logs", "!logs/keep.log"], "logs/keep.log", False),
    (["!logs/keep.log", "logs"], "logs/keep.log", True),   # last match wins
    (["a?c"], "abc", True),
    (["a?c"], "a/c", False),
    (["[ab]1.txt"], "b1.txt", True),
    # Go's filepath.Match (BuildKit): only "^" negates; "[!ab]" is the class of "!", "a" and "b"
    (["[!ab]1.txt"], "a1.txt", True),
    (["[!ab]1.txt"], "!1.txt", True),
    (["[!ab]1.txt"], "c1.txt", False),
    (["[^ab]1.txt"], "c1.txt", True),
    (["a.b"], "axb", False),                      # "." is literal
    (["a+b(c)"], "a+b(c)", True),
    (["dir/**"], "dir/x/y", True),
    (["dir/**"], "dir", False),
    (["**"], "anything/at/all", True),
    (["*"], "x/y", True),                         # parent "x" matches
    (["\\*star"], "*star", True),
    (["\\*star"], "xstar", False),
    ([], "x", False),
    (["*.o", "!important.o"], "src/important.o", False),  # *.o doesn't match nested
]


@pytest.mark.parametrize("patterns,path,excluded", CASES)
def test_matches(patterns: list[str], path: str, excluded: bool) -> None:
    assert PathMatcher(patterns).matches(path) is excluded


@pytest.mark.parametrize("patterns,d,may", [
    (["logs", "!logs/keep.log"], "logs", True),
    (["logs", "!other/keep.log"], "logs", False),
    (["logs"], "logs", False),
    (["build", "!**/*.keep"], "build", True),
    (["a", "!a/*/x"], "a/b", True),
    (["a", "!a/c/x"], "a/b", False),
    (["a", "!a"], "a/b", True),
])
def test_may_match_below(patterns: list[str], d: str, may: bool) -> None:
    m = PathMatcher(patterns)
    assert m.may_match_below(d) is may
    assert m.can_skip_dir(d) is (m.matches(d) and not may)


def test_blank_patterns_are_dropped() -> None:
    assert not PathMatcher(["", "   ", "!"])
    assert PathMatcher(["  *.key  "]).matches("a.key")
