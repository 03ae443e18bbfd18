"""Committing a step's writable snapshot as a layer: the layer blob into the store and the
snapshot installed (`finish_layer`), after the RUN-only clean-ups of what the step's init left
(mount-point stubs, `remove_stubs`) and of what overlay copy-up broke (hard links,
`relink_copied_up`).
"""
from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from builder.image.oci import Descriptor, MediaType
from builder.image.view import LayerRef
from builder.layer.tar import _OPAQUE_XATTRS, write_layer
from builder.sandbox.context import StepContext
from builder.sandbox.rootfd import RootDir
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
    the dirs they were made in, and (overlay) drop dirs that were only copied up for them. Every
    path is walked inside the root without following symlinks (`RootDir`): a stub or parent the
    step replaced with a symlink (to a host path, say) is left alone."""
    with RootDir(active.fs) as fs:
        for rel in reversed(report.stubs):
            st = fs.lstat(rel)
            try:
                if st is None:
                    continue
                if stat.S_ISDIR(st.st_mode) and not fs.listdir(rel):
                    fs.rmdir(rel)
                elif stat.S_ISREG(st.st_mode) and st.st_size == 0:
                    fs.unlink(rel)
            except OSError:
                pass
        for rel, atime, mtime in sorted(report.parents, key=lambda x: -len(x[0])):
            st = fs.lstat(rel)
            if st is None or not stat.S_ISDIR(st.st_mode):
                continue
            fs.utime(rel, (atime, mtime))
            if overlay and rel:
                _drop_copied_up(active, fs, rel)


def _drop_copied_up(active: Active, fs: RootDir, rel: str) -> None:
    """Remove upper dirs on the way to `rel` that are empty and have their lower dir's mode and
    owner (only copied up because a stub was made in them; their mtime moved only because of
    the stub)."""
    parts = rel.split("/")
    while parts:
        r = "/".join(parts)
        ust = fs.lstat(r)
        try:
            if ust is None or not stat.S_ISDIR(ust.st_mode) or fs.listdir(r) or _has_opaque(fs, r):
                return
        except FileNotFoundError:
            return
        lst = None
        for lower in active.rootfs.lower:
            with RootDir(lower) as low:
                lst = low.lstat(r)
            if lst is not None:
                break
        if lst is None or not stat.S_ISDIR(lst.st_mode):
            return
        if (lst.st_mode, lst.st_uid, lst.st_gid) != (ust.st_mode, ust.st_uid, ust.st_gid):
            return
        fs.rmdir(r)
        parts.pop()


def _has_opaque(fs: RootDir, rel: str) -> bool:
    return fs.getxattr(rel, "user.overlay.opaque") == b"y"


def relink_copied_up(active: Active) -> None:
    """Overlay copy-up breaks hard links: a step that changes one name of a lower file with
    several names leaves the others untouched. BuildKit's differ reports every name of the
    changed inode, so give the other names (when nothing else changed or hid them) the same
    upper inode: the layer then carries the whole hard-link group, as with the copying
    snapshotter. Paths in the upper dir (which the step wrote) and in the lower dirs are walked
    without following symlinks (`RootDir`)."""
    with contextlib.ExitStack() as stack:
        fs = stack.enter_context(RootDir(active.fs))
        lowers = [stack.enter_context(RootDir(p)) for p in active.rootfs.lower]
        for i, inodes in _changed_link_groups(active.fs, fs, lowers).items():
            for dirpath, _dirs, files in os.walk(lowers[i].path):
                for name in files:
                    st = os.lstat(os.path.join(dirpath, name))
                    src = inodes.get((st.st_dev, st.st_ino))
                    if src is None:
                        continue
                    rel = os.path.relpath(os.path.join(dirpath, name), lowers[i].path)
                    if rel == src or _shadowed([fs, *lowers[:i]], rel):
                        continue
                    _relink(fs, lowers[i], src, rel)


def _relink(fs: RootDir, lower: RootDir, src: str, rel: str) -> None:
    """Link upper `src` at `rel`, creating the parents `rel` lacks in the upper dir with the
    lower dirs' metadata, the times of its parent kept."""
    parts = rel.split("/")[:-1]
    for k in range(1, len(parts) + 1):
        d = "/".join(parts[:k])
        ust = fs.lstat(d)
        if ust is not None:
            if not stat.S_ISDIR(ust.st_mode):
                return
            continue
        lst = lower.lstat(d)
        if lst is None or not stat.S_ISDIR(lst.st_mode):
            return
        fs.mkdir(d, lst)
    parent = "/".join(parts)
    pst = fs.lstat(parent)
    if pst is None:
        return
    fs.link(src, rel)
    fs.utime(parent, (pst.st_atime_ns, pst.st_mtime_ns))


def _changed_link_groups(upper: Path, fs: RootDir, lowers: list[RootDir]) -> dict[int, dict[tuple[int, int], str]]:
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
                lst = lower.lstat(rel)
                if lst is None:
                    continue
                if stat.S_ISREG(lst.st_mode) and lst.st_nlink > 1:
                    wanted.setdefault(i, {})[(lst.st_dev, lst.st_ino)] = rel
                break
    return wanted


def _shadowed(layers: list[RootDir], rel: str) -> bool:
    """Is the lower name `rel` hidden or replaced by one of `layers` (the upper dir and the lower
    dirs above it)? Every path component is checked on its own, never followed: a parent that
    became a symlink, a whiteout or a file, or an opaque directory, hides it, and so does any entry
    at `rel` itself."""
    parts = rel.split("/")
    for layer in layers:
        for k in range(1, len(parts)):
            d = "/".join(parts[:k])
            st = layer.lstat(d)
            if st is None:
                break
            if not stat.S_ISDIR(st.st_mode):
                return True
            if any(layer.getxattr(d, x) == b"y" for x in _OPAQUE_XATTRS):
                return True
        else:
            if layer.lstat(rel) is not None:
                return True
    return False
