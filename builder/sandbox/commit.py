"""Committing a step's writable snapshot as a layer: the layer blob into the store and the
snapshot installed (`finish_layer`), after the RUN-only clean-ups of what the step's init left
(mount-point stubs, `remove_stubs`) and of what overlay copy-up broke (hard links,
`relink_copied_up`).
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

from builder.image.oci import Descriptor, MediaType
from builder.image.view import LayerRef
from builder.layer.tar import _OPAQUE_XATTRS, _lgetxattr, write_layer
from builder.sandbox.context import StepContext
from builder.sandbox.spec import StepReport
from builder.store.snapshot import Active


def finish_layer(ctx: StepContext, active: Active) -> LayerRef | None:
    """Write the layer of `active` into the store and install its snapshot; None if empty."""
    cfg = ctx.cfg
    with ctx.store.writer() as w:
        stats = write_layer(active.fs, ctx.snap.changes(active), w,  # type: ignore[arg-type]
                            compression=cfg.compression, source_date_epoch=cfg.source_date_epoch)
        if stats.empty:
            ctx.snap.abort(active)
            return None
        digest, size = w.commit()
    ref = LayerRef(descriptor=Descriptor(media_type=MediaType.oci_layer(cfg.compression), digest=digest, size=size),
                   diff_id=stats.diff_id)
    ctx.snap.commit(active, active.base + (ref,))
    return ref


def remove_stubs(active: Active, report: StepReport, *, overlay: bool) -> None:
    """Remove mount-point stubs the step's init created (when still empty), restore the times of
    the dirs they were made in, and (overlay) drop dirs that were only copied up for them."""
    fs = active.fs
    for rel in reversed(report.stubs):
        p = fs / rel
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            continue
        try:
            if stat.S_ISDIR(st.st_mode) and not os.listdir(p):
                os.rmdir(p)
            elif stat.S_ISREG(st.st_mode) and st.st_size == 0:
                os.unlink(p)
        except OSError:
            pass
    parents = sorted(report.parents, key=lambda x: -len(x[0]))
    for rel, atime, mtime in parents:
        p = fs / rel if rel else fs
        try:
            if stat.S_ISDIR(os.lstat(p).st_mode):
                os.utime(p, ns=(atime, mtime), follow_symlinks=False)
        except FileNotFoundError:
            continue
        if overlay and rel:
            _drop_copied_up(active, rel)


def _drop_copied_up(active: Active, rel: str) -> None:
    """Remove upper dirs on the way to `rel` that are empty and have their lower dir's mode and
    owner (only copied up because a stub was made in them; their mtime moved only because of
    the stub)."""
    parts = rel.split("/")
    while parts:
        r = "/".join(parts)
        up = active.fs / r
        try:
            ust = os.lstat(up)
            if not stat.S_ISDIR(ust.st_mode) or os.listdir(up) or _has_opaque(up):
                return
        except FileNotFoundError:
            return
        lst = None
        for lower in active.rootfs.lower:
            try:
                lst = os.lstat(os.path.join(lower, r))
                break
            except FileNotFoundError:
                continue
        if lst is None or not stat.S_ISDIR(lst.st_mode):
            return
        if (lst.st_mode, lst.st_uid, lst.st_gid) != (ust.st_mode, ust.st_uid, ust.st_gid):
            return
        os.rmdir(up)
        parts.pop()


def _has_opaque(p: Path) -> bool:
    try:
        return os.getxattr(p, "user.overlay.opaque", follow_symlinks=False) == b"y"
    except OSError:
        return False


def relink_copied_up(active: Active) -> None:
    """Overlay copy-up breaks hard links: a step that changes one name of a lower file with
    several names leaves the others untouched. BuildKit's differ reports every name of the
    changed inode, so give the other names (when nothing else changed or hid them) the same
    upper inode: the layer then carries the whole hard-link group, as with the copying
    snapshotter."""
    lowers = list(active.rootfs.lower)
    for i, inodes in _changed_link_groups(active.fs, lowers).items():
        for dirpath, _dirs, files in os.walk(lowers[i]):
            for name in files:
                full = os.path.join(dirpath, name)
                st = os.lstat(full)
                src = inodes.get((st.st_dev, st.st_ino))
                if src is None:
                    continue
                rel = os.path.relpath(full, lowers[i])
                if rel == src or _shadowed([str(active.fs), *lowers[:i]], rel):
                    continue
                parent = os.path.join(active.fs, os.path.dirname(rel))
                _mkparents(active.fs, lowers[i], os.path.dirname(rel))
                pst = os.lstat(parent)
                os.link(os.path.join(active.fs, src), os.path.join(active.fs, rel))
                os.utime(parent, ns=(pst.st_atime_ns, pst.st_mtime_ns))


def _changed_link_groups(upper: Path, lowers: list[str]) -> dict[int, dict[tuple[int, int], str]]:
    """Regular files of `upper` whose lower file (in the first lower that has the name) has
    several links: lower index → (dev, ino) of that lower file → the upper path."""
    wanted: dict[int, dict[tuple[int, int], str]] = {}
    for dirpath, _dirs, files in os.walk(upper):
        for name in files:
            full = os.path.join(dirpath, name)
            ust = os.lstat(full)
            if not stat.S_ISREG(ust.st_mode):
                continue
            rel = os.path.relpath(full, upper)
            for i, lower in enumerate(lowers):
                try:
                    lst = os.lstat(os.path.join(lower, rel))
                except (FileNotFoundError, NotADirectoryError):
                    continue
                if stat.S_ISREG(lst.st_mode) and lst.st_nlink > 1:
                    wanted.setdefault(i, {})[(lst.st_dev, lst.st_ino)] = rel
                break
    return wanted


def _shadowed(layers: list[str], rel: str) -> bool:
    """Is the lower name `rel` hidden or replaced by one of `layers` (the upper dir and the lower
    dirs above it)? Every path component is checked with lstat, never followed: a parent that
    became a symlink, a whiteout or a file, or an opaque directory, hides it, and so does any entry
    at `rel` itself."""
    parts = rel.split("/")
    for layer in layers:
        cur = layer
        for comp in parts[:-1]:
            cur = os.path.join(cur, comp)
            try:
                st = os.lstat(cur)
            except FileNotFoundError:
                break
            if not stat.S_ISDIR(st.st_mode):
                return True
            if any(_lgetxattr(os.fsencode(cur), x) == b"y" for x in _OPAQUE_XATTRS):
                return True
        else:
            if os.path.lexists(os.path.join(cur, parts[-1])):
                return True
    return False


def _mkparents(upper: Path, lower: str, rel: str) -> None:
    """Create the dirs of `rel` in `upper` that are missing, with the lower dirs' metadata."""
    if not rel or os.path.isdir(os.path.join(upper, rel)):
        return
    _mkparents(upper, lower, os.path.dirname(rel))
    st = os.lstat(os.path.join(lower, rel))
    p = os.path.join(upper, rel)
    os.mkdir(p)
    os.chown(p, st.st_uid, st.st_gid)
    os.chmod(p, st.st_mode & 0o7777)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
