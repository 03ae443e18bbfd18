"""Substitution patterns in linear time: the same answers as the regex translation on small
inputs (hypothesis), and no blow-up where a backtracking matcher hangs."""
from __future__ import annotations

import re
import time

from hypothesis import given, settings, strategies as st

from frontend import shellpattern


def regex_of(pattern: str) -> re.Pattern[str]:
    out = []
    for t in shellpattern.tokens(pattern):
        out.append(".*" if t is shellpattern._STAR else "." if t is shellpattern._ONE else re.escape(str(t)))
    return re.compile("".join(out), re.S)


def ref_trim(val, pat, prefix, longest):
    rx, n = regex_of(pat), len(val)
    for k in (range(n, -1, -1) if longest else range(n + 1)):
        part = val[:k] if prefix else val[n - k:]
        if rx.fullmatch(part):
            return val[k:] if prefix else val[:n - k]
    return val


def ref_replace(val, pat, repl, all_):
    if not pat:
        return val
    rx, out, i = regex_of(pat), [], 0
    while i <= len(val):
        m = next((j for j in range(len(val), i, -1) if rx.fullmatch(val, i, j)), None)
        if m is not None:
            out.append(repl)
            i = m
            if not all_:
                return "".join(out) + val[i:]
            continue
        if i < len(val):
            out.append(val[i])
        i += 1
    return "".join(out)


PAT = st.text(alphabet="ab*?", max_size=6)
VAL = st.text(alphabet="ab/", max_size=10)


@settings(max_examples=400, deadline=None)
@given(VAL, PAT, st.booleans(), st.booleans())
def test_trim_agrees_with_the_regex_reference(val, pat, prefix, longest):
    assert shellpattern.trim(val, pat, prefix=prefix, longest=longest) == ref_trim(val, pat, prefix, longest)


@settings(max_examples=400, deadline=None)
@given(VAL, PAT, st.booleans())
def test_replace_agrees_with_the_regex_reference(val, pat, all_):
    assert shellpattern.replace(val, pat, "<>", all_=all_) == ref_replace(val, pat, "<>", all_)


def test_replace_longest_match_leftmost():
    assert shellpattern.replace("aXbXc", "X", "-", all_=False) == "a-bXc"
    assert shellpattern.replace("aXbXc", "X", "-", all_=True) == "a-b-c"
    assert shellpattern.replace("abcabc", "b*", "", all_=False) == "a"
    assert shellpattern.replace("abc", "", "x", all_=True) == "abc"
    assert shellpattern.replace("abc", "*", "x", all_=True) == "x"
    assert shellpattern.trim("file.tar.gz", "*.", prefix=True, longest=True) == "gz"
    assert shellpattern.trim("file.tar.gz", ".*", prefix=False, longest=False) == "file.tar"
    assert shellpattern.trim("a*b", "\\**", prefix=False, longest=True) == "a"


def test_patterns_that_hang_a_backtracking_matcher_are_fast():
    start = time.monotonic()
    assert shellpattern.replace("a" * 200, "*a*a*a*a*a*a*a*a*b", "x", all_=True) == "a" * 200
    assert shellpattern.trim("a" * 3000, "*a*a*b", prefix=False, longest=True) == "a" * 3000
    assert time.monotonic() - start < 10
