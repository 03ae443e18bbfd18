"""COPY sources: a readable source tree (`SourceDir`) and the expansion of one source pattern
inside it (`resolve_sources`: ".." clamped, symlinks in parent components followed inside the
root, `*`, `?`, `[...]` per component, `**` any number of directories, a "/./" pivot for
--parents, .dockerignore excludes). Also used by the solver's content hashing, so a digest covers
exactly what a copy reads.
"""
from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass
from pathlib import Path

from builder.layer.pathmatch import PathMatcher, glob_match
from builder.layer.tar import resolve_in_root

__all__ = ["SourceDir", "SourceMatch", "resolve_sources", "has_wildcards", "join", "relto"]

_MAGIC = set("*?[")


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceDir:
    """A readable source tree. `excludes`: .dockerignore patterns relative to `path`.
    `reset_owner`: True for host directories (build context, named contexts): entries copied
    from it become 0:0 unless the copy has a chown."""
    path: Path
    excludes: tuple[str, ...] = ()
    reset_owner: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceMatch:
    """One resolved source: `rel` is its path inside the source root (parents resolved, final
    component as written), `host` the host path to read (final symlink followed when asked),
    `rel_base` the path below the "/./" pivot (for --parents), `base` the pivot dir."""
    rel: str
    host: Path
    rel_base: str
    base: str


def has_wildcards(p: str) -> bool:
    return any(c in _MAGIC for c in p)


def _split_pivot(pattern: str) -> tuple[list[str], list[str]]:
    comps = pattern.split("/")
    while comps and comps[0] in ("", "."):
        comps = comps[1:]
    if "." in comps[:-1]:
        i = comps.index(".")
        base, rest = comps[:i], comps[i + 1:]
    else:
        base, rest = [], comps
    clean = lambda cs: [c for c in posixpath.normpath("/" + "/".join(cs)).split("/") if c]  # noqa: E731
    return clean(base), [c for c in rest if c not in ("", ".")]


def resolve_sources(src_root: Path, pattern: str, *, follow_symlinks: bool = True,
                    allow_wildcard: bool = True, ignore: PathMatcher | None = None) -> list[SourceMatch]:
    """Expand one COPY source pattern inside `src_root`, sorted. Entries excluded by `ignore`
    (relative to src_root) do not exist. A literal path yields one match if it exists, else none."""
    base, rest = _split_pivot(pattern)
    if ".." in rest:
        merged = [c for c in posixpath.normpath("/" + "/".join(base + rest)).split("/") if c]
        base, rest = [], merged
    base_host = resolve_in_root(src_root, "/".join(base))
    base_rel = relto(src_root, base_host)
    states: list[tuple[str, str]] = [(base_rel, "")]   # (resolved rel to root, rel to base)
    for i, comp in enumerate(rest):
        last = i == len(rest) - 1
        nxt: list[tuple[str, str]] = []
        for rel, relb in states:
            if comp == "**" and allow_wildcard:
                nxt.extend(_all_dirs(src_root, rel, relb, ignore))
                continue
            if allow_wildcard and has_wildcards(comp):
                try:
                    names = sorted(os.listdir(resolve_in_root(src_root, rel)))
                except (FileNotFoundError, NotADirectoryError):
                    continue
                cands = [n for n in names if glob_match(n, comp)]
            else:
                cands = [comp]
            for n in cands:
                nrel, nrelb = join(rel, n), join(relb, n)
                if not last:
                    host = resolve_in_root(src_root, nrel)
                    if not host.is_dir():
                        continue
                    nrel = relto(src_root, host)
                nxt.append((nrel, nrelb))
        states = nxt
    out: list[SourceMatch] = []
    seen: set[str] = set()
    for rel, relb in states:
        host = resolve_in_root(src_root, rel, follow_final=follow_symlinks)
        if not os.path.lexists(host) or rel in seen:
            continue
        if ignore and ignore.matches(rel) and not (host.is_dir() and ignore.may_match_below(rel)):
            continue
        seen.add(rel)
        out.append(SourceMatch(rel=rel, host=host, rel_base=relb, base=base_rel))
    return out


def _all_dirs(root: Path, rel: str, relb: str, ignore: PathMatcher | None) -> list[tuple[str, str]]:
    out = [(rel, relb)]
    host = resolve_in_root(root, rel)
    try:
        names = sorted(os.listdir(host))
    except (FileNotFoundError, NotADirectoryError):
        return []
    for n in names:
        r = join(rel, n)
        if os.path.isdir(host / n) and not os.path.islink(host / n):
            if ignore and ignore.can_skip_dir(r):
                continue
            out.extend(_all_dirs(root, r, join(relb, n), ignore))
    return out


def join(a: str, b: str) -> str:
    return f"{a}/{b}" if a else b


def relto(root: Path, host: Path) -> str:
    r = os.path.relpath(host, root)
    return "" if r == "." else r
