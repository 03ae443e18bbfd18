"""Glob patterns matched in linear time (as Go's filepath.Match and moby's patternmatcher do),
never by backtracking: a pattern is compiled to a small automaton whose set of live states is
advanced one character at a time, so `*a*a*a*…b` against a long name costs O(pattern × name).

Syntax: `*` any run of non-"/" characters, `?` one non-"/" character, `[...]` a class (only "^"
negates, as Go: `[!a]` is the class of "!" and "a"; ranges `a-z`; `\\` escapes inside), `\\x` the
literal x; with `double_star`, `**` spans any number of path components: `**/` (or `**` between
slashes) matches nothing or anything ending in "/", a trailing `**` matches everything. An
unterminated `[` is a literal "["; an empty class matches nothing."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union

_LIT, _ONE, _STAR, _CLASS, _DSTAR, _DSTAR_END = range(6)


@dataclass(frozen=True, slots=True)
class _Class:
    negated: bool
    chars: frozenset[str]
    ranges: tuple[tuple[str, str], ...]

    def has(self, c: str) -> bool:
        hit = c in self.chars or any(lo <= c <= hi for lo, hi in self.ranges)
        return hit != self.negated


_Token = tuple[int, Union[str, _Class, None]]


def _parse_class(pattern: str, i: int) -> tuple[_Class, int] | None:
    """The class starting at pattern[i] == "[" and the index of its "]", or None (unterminated)."""
    n = len(pattern)
    j = i + 2 if i + 1 < n and pattern[i + 1] == "^" else i + 1
    while j < n and pattern[j] != "]":
        j += 2 if pattern[j] == "\\" else 1          # an escaped "]" does not close the class
    if j >= n:
        return None
    body = pattern[i + 1:j]
    negated = body.startswith("^")
    if negated:
        body = body[1:]
    items: list[str] = []
    k = 0
    while k < len(body):
        if body[k] == "\\" and k + 1 < len(body):
            k += 1
        items.append(body[k])
        k += 1
    chars: set[str] = set()
    ranges: list[tuple[str, str]] = []
    k = 0
    while k < len(items):
        if k + 2 < len(items) and items[k + 1] == "-":
            ranges.append((items[k], items[k + 2]))
            k += 3
        else:
            chars.add(items[k])
            k += 1
    return _Class(negated=negated, chars=frozenset(chars), ranges=tuple(ranges)), j


def _tokens(pattern: str, double_star: bool) -> list[_Token]:
    out: list[_Token] = []
    i, n = 0, len(pattern)
    while i < n:
        ch = pattern[i]
        if ch == "*" and double_star and i + 1 < n and pattern[i + 1] == "*":
            i += 2
            if i < n and pattern[i] == "/":
                i += 1
            out.append((_DSTAR_END, None) if i >= n else (_DSTAR, None))
            continue
        if ch == "*":
            if not out or out[-1][0] != _STAR:          # `**` without double_star is one `*`
                out.append((_STAR, None))
        elif ch == "?":
            out.append((_ONE, None))
        elif ch == "\\" and i + 1 < n:
            i += 1
            out.append((_LIT, pattern[i]))
        elif ch == "[" and (cls := _parse_class(pattern, i)) is not None:
            out.append((_CLASS, cls[0]))
            i = cls[1]
        else:
            out.append((_LIT, ch))
        i += 1
    return out


class Glob:
    """A compiled glob. States are (token index, inside) pairs; `inside` marks a `**/` that has
    consumed characters and now needs a "/" to finish."""

    __slots__ = ("pattern", "_tok", "_start")

    def __init__(self, pattern: str, *, double_star: bool = False) -> None:
        self.pattern = pattern
        self._tok = _tokens(pattern, double_star)
        self._start = self._close({(0, False)})

    def _close(self, states: set[tuple[int, bool]]) -> frozenset[tuple[int, bool]]:
        """Add the states reachable without consuming a character."""
        todo = list(states)
        seen = set(states)
        while todo:
            i, inside = todo.pop()
            if i < len(self._tok) and not inside and self._tok[i][0] in (_STAR, _DSTAR, _DSTAR_END):
                nxt = (i + 1, False)
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return frozenset(seen)

    def _step(self, states: frozenset[tuple[int, bool]], c: str) -> frozenset[tuple[int, bool]]:
        out: set[tuple[int, bool]] = set()
        for i, inside in states:
            if i >= len(self._tok):
                continue
            kind, arg = self._tok[i]
            if kind == _LIT and c == arg or kind == _ONE and c != "/" \
                    or kind == _CLASS and c != "/" and isinstance(arg, _Class) and arg.has(c):
                out.add((i + 1, False))
            elif kind == _STAR and c != "/" or kind == _DSTAR_END:
                out.add((i, False))
            elif kind == _DSTAR:
                out.add((i, True))
                if c == "/":
                    out.add((i + 1, False))
        return self._close(out) if out else frozenset()

    def _accepts(self, states: frozenset[tuple[int, bool]]) -> bool:
        return (len(self._tok), False) in states

    def match(self, text: str) -> bool:
        """Does the whole of `text` match?"""
        states = self._start
        for c in text:
            states = self._step(states, c)
            if not states:
                return False
        return self._accepts(states)

    def match_self_or_parent(self, path: str) -> bool:
        """Does `path`, or one of its parents (the prefixes that end before a "/"), match? One
        pass over the path."""
        states = self._start
        for c in path:
            if c == "/" and self._accepts(states):
                return True
            states = self._step(states, c)
            if not states:
                return False
        return self._accepts(states)
