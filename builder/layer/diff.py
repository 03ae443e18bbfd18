"""Snapshot diffs: what a step changed, as `Change`s for write_layer.

- `overlay_changes(upper)`: an overlayfs upper dir (whiteouts are char 0/0 devices, opaque
  directories carry the overlay opaque xattr).
- `tree_changes(lower, upper)`: two full trees (the copying snapshotter).
"""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Iterator

from builder.errors import LayerError
from builder.layer.tar import _OPAQUE_XATTRS, WHITEOUT_PREFIX, Change, _lgetxattr, _rel

__all__ = ["overlay_changes", "tree_changes"]

def overlay_changes(upper: Path) -> Iterator[Change]:
    """Changes recorded in an overlayfs upper dir, parents before children, sorted by name bytes.

    Char device 0/0 → delete; a directory marked opaque (`user.overlay.opaque`/`trusted...` = y)
    → opaque then add; everything else → add. A real entry named `.wh.*` raises LayerError."""
    yield from _walk_upper(os.fsencode(upper), [])


def _walk_upper(upper: bytes, parts: list[bytes]) -> Iterator[Change]:
    dirpath = upper + b"/" + b"/".join(parts) if parts else upper
    for name in sorted(os.listdir(dirpath)):
        p = parts + [name]
        full = dirpath + b"/" + name
        st = os.lstat(full)
        if name.startswith(WHITEOUT_PREFIX.encode()):
            raise LayerError(f"a file named {_rel(p)!r} was created; names starting with "
                             f"'{WHITEOUT_PREFIX}' are reserved for layer whiteouts")
        if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
            yield Change(kind="delete", path=_rel(p))
            continue
        if stat.S_ISDIR(st.st_mode):
            if any(_lgetxattr(full, x) == b"y" for x in _OPAQUE_XATTRS):
                yield Change(kind="opaque", path=_rel(p))
            yield Change(kind="add", path=_rel(p))
            yield from _walk_upper(upper, p)
        else:
            yield Change(kind="add", path=_rel(p))


def _meta(st: os.stat_result) -> tuple[int, ...]:
    return (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
            st.st_mtime_ns, st.st_rdev)


# File times come from a coarse (per-tick) clock: a file written up to this long after `since_ns`
# was measured can carry an older ctime.
_CLOCK_SLACK_NS = 50_000_000


def tree_changes(lower: Path, upper: Path, *, since_ns: int | None = None) -> Iterator[Change]:
    """Changes between two full trees (copying snapshotter), sorted by name bytes, parents first.

    An entry only in upper, or whose type/mode/owner/mtime/size/rdev/link target (or, for regular
    files, link count: a new hard link to a lower file brings the file along) differs → add
    (a new directory brings all its descendants as adds); an entry only in lower → one delete (not
    its children). A regular file with equal metadata may still have new content (COPY keeps
    source mtimes, and two files written in the same clock tick share one): its content is
    compared, unless its ctime shows it was not touched since `since_ns` (when `upper` was
    complete as a copy of `lower`). A directory whose own metadata is equal is not emitted, but
    its children are compared. `upper` must be a copy that kept mtimes, owners and hard links
    (`cp -a`-like), else everything looks changed."""
    yield from _cmp_dir(os.fsencode(lower), os.fsencode(upper), [],
                        None if since_ns is None else since_ns - _CLOCK_SLACK_NS)


def _cmp_dir(lower: bytes, upper: bytes, parts: list[bytes], since_ns: int | None) -> Iterator[Change]:
    sub = (b"/" + b"/".join(parts)) if parts else b""
    lnames = set(os.listdir(lower + sub))
    unames = set(os.listdir(upper + sub))
    for name in sorted(lnames | unames):
        p = parts + [name]
        if name not in unames:
            yield Change(kind="delete", path=_rel(p))
            continue
        ust = os.lstat(upper + sub + b"/" + name)
        if name.startswith(WHITEOUT_PREFIX.encode()):
            raise LayerError(f"a file named {_rel(p)!r} was created; names starting with "
                             f"'{WHITEOUT_PREFIX}' are reserved for layer whiteouts")
        lst = os.lstat(lower + sub + b"/" + name) if name in lnames else None
        udir = stat.S_ISDIR(ust.st_mode)
        if lst is None or (udir and not stat.S_ISDIR(lst.st_mode)):
            yield Change(kind="add", path=_rel(p))
            if udir:
                yield from _all_below(upper, p)
            continue
        if udir:
            if _meta(lst) != _meta(ust):
                yield Change(kind="add", path=_rel(p))
            yield from _cmp_dir(lower, upper, p, since_ns)
            continue
        changed = _meta(lst) != _meta(ust) or lst.st_size != ust.st_size \
            or (stat.S_ISREG(ust.st_mode) and lst.st_nlink != ust.st_nlink)
        if not changed and stat.S_ISLNK(ust.st_mode):
            changed = os.readlink(lower + sub + b"/" + name) != os.readlink(upper + sub + b"/" + name)
        elif not changed and stat.S_ISREG(ust.st_mode) and (since_ns is None or ust.st_ctime_ns >= since_ns):
            changed = not _same_content(lower + sub + b"/" + name, upper + sub + b"/" + name)
        if changed:
            yield Change(kind="add", path=_rel(p))


def _same_content(a: bytes, b: bytes) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(1 << 20), fb.read(1 << 20)
            if x != y:
                return False
            if not x:
                return True


def _all_below(root: bytes, parts: list[bytes]) -> Iterator[Change]:
    d = root + b"/" + b"/".join(parts)
    for name in sorted(os.listdir(d)):
        p = parts + [name]
        yield Change(kind="add", path=_rel(p))
        if stat.S_ISDIR(os.lstat(d + b"/" + name).st_mode):
            yield from _all_below(root, p)


