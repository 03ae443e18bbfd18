"""The tree an overlay mount would show, read without mounting: how a layer is applied in overlay
format (`upper` = the new layer's own directory, `lowers` = the layers below it, top first) so that
the merged result is the tree a full extraction gives (containerd resolves an entry's parents in
the whole tree below it: a child of a lower layer's symlink goes where the symlink points, a hard
link may name a lower layer's file, an opaque marker may be reached through a symlink).

Lookups follow overlayfs: an upper entry hides lower ones; a whiteout (char device 0/0) or a
non-directory ends the search; a directory is the union of the directories found down to the
first opaque one (`user.overlay.opaque` / `trusted.overlay.opaque` = "y"). Lowers never change
while a layer is applied, so their answers are cached by path.

`resolve` walks a name one component at a time inside the merged root (symlinks followed inside
it, ".." never above it, at most MAX_SYMLINKS hops); `ensure_dir` makes a resolved directory real
in the upper, copying a lower directory's owner, mode, xattrs and mtime up (as overlayfs's own
copy-up does); `copy_up` does the same for a lower non-directory (a hard link's target).
"""
from __future__ import annotations

import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

from builder.errors import LayerError
from builder.layer.inroot import MAX_SYMLINKS, split_components
from builder.layer.rmtree import remove_tree

__all__ = ["MergedView", "Node", "is_whiteout", "is_opaque", "copy_xattrs", "OPAQUE_XATTRS", "SKIP_XATTR_PREFIXES"]

SKIP_XATTR_PREFIXES = ("user.overlay.", "trusted.overlay.", "security.selinux")
OPAQUE_XATTRS = ("user.overlay.opaque", "trusted.overlay.opaque")


@dataclass(frozen=True, slots=True)
class Node:
    """One path of the merged tree: a directory (the upper dir holding it, if any, and the lower
    dirs whose union it is, top first), another entry (`other`: the host path that shows), or
    nothing."""
    kind: Literal["dir", "other", "missing"]
    upper: bytes | None = None
    lower: tuple[bytes, ...] = ()
    other: bytes = b""


MISSING = Node("missing")
Resolved = list[tuple[bytes, Node]]


def lstat_or_none(p: bytes) -> os.stat_result | None:
    try:
        return os.lstat(p)
    except (FileNotFoundError, NotADirectoryError):
        return None


def is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def is_opaque(p: bytes) -> bool:
    for name in OPAQUE_XATTRS:
        try:
            if os.getxattr(p, name, follow_symlinks=False) == b"y":
                return True
        except OSError:
            continue
    return False


def _scan(dirs: tuple[bytes, ...], name: bytes) -> Node:
    found: list[bytes] = []
    for d in dirs:
        p = d + b"/" + name
        st = lstat_or_none(p)
        if st is None:
            continue
        if is_whiteout(st):
            break
        if not stat.S_ISDIR(st.st_mode):
            if not found:
                return Node("other", other=p)
            break
        found.append(p)
        if is_opaque(p):
            break
    return Node("dir", lower=tuple(found)) if found else MISSING


class MergedView:
    def __init__(self, upper: Path, lowers: Sequence[Path]) -> None:
        self.upper = os.fsencode(upper)
        self.root = Node("dir", upper=self.upper, lower=tuple(os.fsencode(p) for p in lowers))
        self._low: dict[tuple[bytes, ...], Node] = {(): Node("dir", lower=self.root.lower)}
        self.copied_dirs: list[tuple[bytes, int]] = []     # (upper dir, mtime_ns) to restore

    def lower(self, parts: tuple[bytes, ...]) -> Node:
        """What the lowers alone show at `parts` (cached; iterative whatever the depth)."""
        i = len(parts)
        while parts[:i] not in self._low:
            i -= 1
        node = self._low[parts[:i]]
        for j in range(i, len(parts)):
            node = _scan(node.lower, parts[j]) if node.kind == "dir" else MISSING
            self._low[parts[: j + 1]] = node
        return node

    def child(self, parent: Node, parts: tuple[bytes, ...]) -> Node:
        """The node at `parts`, whose parent directory's node is `parent`."""
        if parent.kind != "dir":
            return MISSING
        up_dir = None
        if parent.upper is not None:
            p = parent.upper + b"/" + parts[-1]
            st = lstat_or_none(p)
            if st is not None:
                if is_whiteout(st):
                    return MISSING
                if not stat.S_ISDIR(st.st_mode):
                    return Node("other", other=p)
                if is_opaque(p):
                    return Node("dir", upper=p)
                up_dir = p
        if parent.lower:
            low = self.lower(parts)
            if up_dir is None:
                return low
            return Node("dir", upper=up_dir, lower=low.lower if low.kind == "dir" else ())
        return Node("dir", upper=up_dir) if up_dir is not None else MISSING

    def resolve(self, parts: Sequence[bytes], *, follow_final: bool) -> Resolved:
        """The merged path of `parts` as (component, node) pairs, symlinks followed inside the
        root (a final one only with `follow_final`)."""
        pending = list(reversed(parts))
        out: Resolved = []
        hops = 0
        while pending:
            c = pending.pop()
            if c == b"..":
                if out:
                    out.pop()
                continue
            node = self.child(out[-1][1] if out else self.root, tuple(n for n, _ in out) + (c,))
            if node.kind == "other" and (pending or follow_final) and stat.S_ISLNK(os.lstat(node.other).st_mode):
                hops += 1
                if hops > MAX_SYMLINKS:
                    raise LayerError(f"too many levels of symbolic links resolving {os.fsdecode(b'/'.join(parts))!r}")
                target = os.readlink(node.other)
                if target.startswith(b"/"):
                    out = []
                pending.extend(reversed(split_components(target)))
                continue
            out.append((c, node))
        return out

    def ensure_dir(self, resolved: Resolved) -> bytes:
        """Make every component of `resolved` a directory in the upper; its host path there."""
        cur = self.upper
        for i, (name, node) in enumerate(resolved):
            p = cur + b"/" + name
            if node.kind == "dir" and node.upper is not None:
                cur = p
                continue
            if node.kind == "dir":
                self._copy_dir_up(node.lower[0], p)
            else:
                self.make_dir(p, tuple(n for n, _ in resolved[: i + 1]))
            resolved[i] = (name, Node("dir", upper=p, lower=node.lower))
            cur = p
        return cur

    def make_dir(self, p: bytes, parts: tuple[bytes, ...]) -> None:
        """A new directory at upper path `p` (merged path `parts`) replacing what the upper has
        there; opaque when it replaces an upper entry that hid a lower directory (a full
        extraction would have removed that directory before)."""
        st = lstat_or_none(p)
        if st is not None and stat.S_ISDIR(st.st_mode):
            return
        if st is not None:
            remove_entry(p)
        os.mkdir(p, 0o755)
        if st is not None and self.lower(parts).kind == "dir":
            os.setxattr(p, "user.overlay.opaque", b"y", follow_symlinks=False)

    def _copy_dir_up(self, src: bytes, dst: bytes) -> None:
        st = os.lstat(src)
        os.mkdir(dst, 0o700)
        copy_meta(src, dst, st)
        self.copied_dirs.append((dst, st.st_mtime_ns))

    def copy_up(self, src: bytes, dst: bytes) -> None:
        """Copy the lower non-directory `src` to upper path `dst` (a hard link's target)."""
        st = os.lstat(src)
        if stat.S_ISREG(st.st_mode):
            with open(src, "rb") as fi, open(os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                                                     0o600), "wb") as fo:
                shutil.copyfileobj(fi, fo, 1 << 20)
        elif stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(src), dst)
        elif stat.S_ISFIFO(st.st_mode):
            os.mkfifo(dst, 0o600)
        else:
            raise LayerError(f"cannot hard link to {os.fsdecode(src)!r}: not a file, link or fifo")
        copy_meta(src, dst, st)
        os.utime(dst, ns=(st.st_mtime_ns, st.st_mtime_ns), follow_symlinks=False)

    def restore_times(self) -> None:
        for p, mtime in reversed(self.copied_dirs):
            if lstat_or_none(p) is not None:
                os.utime(p, ns=(mtime, mtime), follow_symlinks=False)


def copy_meta(src: bytes, dst: bytes, st: os.stat_result) -> None:
    """Owner, permission bits and xattrs (never overlay's own) of `src` onto `dst`."""
    os.lchown(dst, st.st_uid, st.st_gid)
    copy_xattrs(src, dst)
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(dst, stat.S_IMODE(st.st_mode))


def remove_entry(p: bytes) -> None:
    """Remove the entry at `p` (a directory with everything in it; never following a link)."""
    remove_tree(Path(os.fsdecode(p)))


def copy_xattrs(src: str | bytes | os.PathLike[str], dst: str | bytes | os.PathLike[str],
                skip: tuple[str, ...] = SKIP_XATTR_PREFIXES) -> None:
    """Copy the extended attributes of `src` onto `dst` (neither followed if a symlink), except
    names starting with `skip` (by default overlay's own and SELinux labels); one that cannot be
    set is left out."""
    try:
        names = os.listxattr(src, follow_symlinks=False)
    except OSError:
        return
    for n in names:
        if n.startswith(skip):
            continue
        try:
            os.setxattr(dst, n, os.getxattr(src, n, follow_symlinks=False), follow_symlinks=False)
        except OSError:
            pass
