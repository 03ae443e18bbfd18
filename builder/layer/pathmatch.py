"""Docker/moby `patternmatcher` semantics for .dockerignore and COPY --exclude.

Contract (same as moby/patternmatcher `MatchesOrParentMatches`):
- patterns are trimmed, cleaned (`path.normpath`), a leading "/" dropped; empty patterns and
  patterns that clean to "." are ignored; "!" makes an exception that re-includes.
- matching is linear-time (builder.layer.glob), never regex backtracking;
- `*` matches any run of non-"/" characters, `?` one non-"/" character, `[...]` a class
  (`[!...]`/`[^...]` negated), `\\x` escapes x, `**` matches any number of path components
  (including none); a trailing `**` matches everything below.
- a pattern matches a path when it matches the path itself or any of its parent directories, so a
  pattern naming a directory excludes everything below it.
- patterns are evaluated in order; the last matching pattern decides (exclude or re-include).
"""
from __future__ import annotations

import functools
import posixpath
from dataclasses import dataclass
from typing import Sequence

from builder.layer.glob import Glob

__all__ = ["PathMatcher", "glob_match"]


@dataclass(frozen=True, slots=True, kw_only=True)
class _Pattern:
    text: str          # cleaned pattern without "!"
    exclusion: bool    # True for "!" exceptions (re-include)
    glob: Glob
    parts: tuple[str, ...]


def _clean(p: str) -> str:
    p = posixpath.normpath(p)
    if p.startswith("/") and len(p) > 1:
        p = p.lstrip("/") or "/"
    return p


class PathMatcher:
    """Compiled pattern list. `matches(p)` is True when `p` (relative, "/"-separated) is excluded."""

    __slots__ = ("_patterns", "_has_exceptions")

    def __init__(self, patterns: Sequence[str]) -> None:
        compiled: list[_Pattern] = []
        for raw in patterns:
            p = raw.strip()
            if not p:
                continue
            exclusion = p.startswith("!")
            if exclusion:
                p = p[1:].strip()
                if not p:
                    continue
            p = _clean(p)
            if p in (".", "/"):
                continue
            compiled.append(_Pattern(text=p, exclusion=exclusion, glob=Glob(p, double_star=True),
                                     parts=tuple(p.split("/"))))
        self._patterns = tuple(compiled)
        self._has_exceptions = any(p.exclusion for p in compiled)

    def __bool__(self) -> bool:
        return bool(self._patterns)

    @property
    def has_exceptions(self) -> bool:
        return self._has_exceptions

    def matches(self, rel_path: str) -> bool:
        """True when `rel_path` (or one of its parent dirs) is excluded by the pattern list."""
        path = _clean(rel_path)
        if path in (".", "/", ""):
            return False
        matched = False
        for pat in self._patterns:
            if pat.glob.match_self_or_parent(path):
                matched = not pat.exclusion
        return matched

    def may_match_below(self, dir_path: str) -> bool:
        """True when some exception ("!") pattern could re-include a path strictly below
        `dir_path`. Conservative: may say True when nothing would be re-included."""
        if not self._has_exceptions:
            return False
        d = _clean(dir_path)
        dparts = [] if d in (".", "/", "") else d.split("/")
        for pat in self._patterns:
            if pat.exclusion and _prefix_may_match(pat.parts, dparts):
                return True
        return False

    def can_skip_dir(self, dir_path: str) -> bool:
        """True when a walker may skip `dir_path` and everything below it: the directory is
        excluded and no exception pattern could re-include anything under it."""
        return self.matches(dir_path) and not self.may_match_below(dir_path)


def _prefix_may_match(pparts: tuple[str, ...], dparts: list[str]) -> bool:
    """Could a pattern with components `pparts` match some path below dir `dparts`?"""
    for i, d in enumerate(dparts):
        if i >= len(pparts):
            return True   # the pattern matches a parent of dir_path: re-includes all below
        p = pparts[i]
        if "**" in p:
            return True
        if not _component_match(d, p):
            return False
    return True


def _component_match(name: str, pat: str) -> bool:
    return glob_match(name, pat)


@functools.lru_cache(maxsize=4096)
def _component_glob(pat: str) -> Glob:
    return Glob(pat)


def glob_match(name: str, pat: str) -> bool:
    """One path component against one glob component, with Go's filepath.Match semantics (what
    BuildKit uses for COPY sources and .dockerignore): `*`, `?`, `[a-z]`, `[^a]`, `\\` escapes."""
    if not any(c in pat for c in "*?[\\"):
        return name == pat
    return _component_glob(pat).match(name)
