"""The linear-time glob matcher: the same answers as a regular-expression reference on small
inputs (hypothesis), and no blow-up on the inputs that make a backtracking matcher hang."""
from __future__ import annotations

import re
import time

from hypothesis import given, settings, strategies as st

from builder.layer.glob import Glob
from builder.layer.pathmatch import PathMatcher, glob_match


def reference(pattern: str, double_star: bool) -> re.Pattern[str]:
    """The obvious translation to a regex (backtracking; fine for short inputs)."""
    out, i, n = [], 0, len(pattern)
    while i < n:
        ch = pattern[i]
        if ch == "*" and double_star and i + 1 < n and pattern[i + 1] == "*":
            i += 2
            if i < n and pattern[i] == "/":
                i += 1
            out.append(".*" if i >= n else "(.*/)?")
            continue
        if ch == "*":
            out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch == "\\" and i + 1 < n:
            i += 1
            out.append(re.escape(pattern[i]))
        else:
            out.append(re.escape(ch))
        i += 1
    return re.compile("".join(out) + r"\Z", re.DOTALL)


PAT = st.text(alphabet="ab/*?\\", max_size=8)
TEXT = st.text(alphabet="ab/", max_size=10)


@settings(max_examples=400, deadline=None)
@given(PAT, TEXT, st.booleans())
def test_same_answers_as_a_regex_reference(pattern, text, double_star):
    assert Glob(pattern, double_star=double_star).match(text) == bool(reference(pattern, double_star).match(text))


@settings(max_examples=300, deadline=None)
@given(PAT, TEXT)
def test_self_or_parent_is_any_prefix_before_a_slash(pattern, path):
    g = Glob(pattern, double_star=True)
    parts = path.split("/")
    prefixes = ["/".join(parts[:i + 1]) for i in range(len(parts))]
    assert g.match_self_or_parent(path) == any(g.match(p) for p in prefixes)


def test_classes_as_go():
    assert glob_match("b", "[a-c]") and not glob_match("d", "[a-c]")
    assert glob_match("d", "[^a-c]") and not glob_match("b", "[^a-c]")
    assert glob_match("!", "[!a]") and glob_match("a", "[!a]")      # Go: "!" does not negate
    assert glob_match("[", "[") and not glob_match("a", "[]")      # unterminated: literal; empty: nothing
    assert glob_match("]", "[\\]]") and not glob_match("/", "[^a]")


def test_copy_wildcard_that_makes_a_backtracking_matcher_hang_is_fast():
    start = time.monotonic()
    assert not glob_match("a" * 60, "*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*b")
    assert time.monotonic() - start < 5


def test_dockerignore_double_stars_on_a_deep_path_are_fast():
    deep = "/".join(["d"] * 1200) + "/f"
    start = time.monotonic()
    m = PathMatcher(["**/" * 20 + "x", "!" + "**/" * 20 + "y"])
    assert not m.matches(deep)
    assert PathMatcher(["**/d/**/f"]).matches(deep)
    assert time.monotonic() - start < 5
