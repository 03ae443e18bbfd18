"""The patterns of `${V#p}`, `${V%p}`, `${V/p/r}` matched in linear time per position (as Go's
RE2 does for BuildKit), never by backtracking: a pattern is a list of tokens whose set of live
positions advances one character at a time.

Syntax, as BuildKit's convertShellPatternToRegex reads it: `*` any string, `?` one character, no
bracket expressions (`[` and `]` are literal), `\\*` `\\?` `\\\\` escape, and a backslash before `}`
or `/` only protects them from the `${...}` syntax. Any other escape is a ValueError."""
from __future__ import annotations

from typing import Iterable, Iterator

_STAR = object()
_ONE = object()
Token = object          # _STAR, _ONE, or a one-character str


def tokens(pattern: str) -> list[Token]:
    out: list[Token] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "*":
            if not out or out[-1] is not _STAR:
                out.append(_STAR)
        elif c == "?":
            out.append(_ONE)
        elif c == "\\":
            nxt = pattern[i + 1] if i + 1 < len(pattern) else ""
            if nxt not in ("}", "/", "*", "?", "\\"):
                raise ValueError(f"invalid escape '\\{nxt}' in substitution pattern")
            out.append(nxt)
            i += 1
        else:
            out.append(c)
        i += 1
    return out


def _close(toks: list[Token], states: Iterable[int]) -> frozenset[int]:
    out = set(states)
    todo = list(out)
    while todo:
        s = todo.pop()
        if s < len(toks) and toks[s] is _STAR and s + 1 not in out:
            out.add(s + 1)
            todo.append(s + 1)
    return frozenset(out)


def _step(toks: list[Token], states: frozenset[int], c: str) -> frozenset[int]:
    nxt = set()
    for s in states:
        if s >= len(toks):
            continue
        t = toks[s]
        if t is _STAR:
            nxt.add(s)
        elif t is _ONE or t == c:
            nxt.add(s + 1)
    return _close(toks, nxt) if nxt else frozenset()


def match_ends(toks: list[Token], text: Iterable[str]) -> Iterator[int]:
    """Every k such that the first k characters of `text` match, in increasing order."""
    states = _close(toks, (0,))
    k = 0
    if len(toks) in states:
        yield 0
    for c in text:
        states = _step(toks, states, c)
        k += 1
        if not states:
            return
        if len(toks) in states:
            yield k


def trim(val: str, pattern: str, *, prefix: bool, longest: bool) -> str:
    """`${V#p}` (prefix, shortest), `${V##p}`, `${V%p}`, `${V%%p}`."""
    toks = tokens(pattern)
    if prefix:
        ends = list(match_ends(toks, val))
    else:
        ends = list(match_ends(toks[::-1], reversed(val)))
    if not ends:
        return val
    k = ends[-1] if longest else ends[0]
    return val[k:] if prefix else val[:len(val) - k]


def replace(val: str, pattern: str, repl: str, *, all_: bool) -> str:
    """`${V/p/r}` and `${V//p/r}`: the longest non-empty match at the leftmost position,
    replaced once or everywhere."""
    toks = tokens(pattern)
    if not toks:
        return val
    out: list[str] = []
    i = 0
    while i <= len(val):
        ends = [k for k in match_ends(toks, val[i:]) if k]
        if ends:
            out.append(repl)
            i += ends[-1]
            if not all_:
                return "".join(out) + val[i:]
            continue
        if i < len(val):
            out.append(val[i])
        i += 1
    return "".join(out)
