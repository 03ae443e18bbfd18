"""COPY/ADD of one `ops.Copy` action into a destination root (`copy_action`): matching the
sources, copying files, directories, symlinks, hard links and xattrs with BuildKit's owner,
mode and time rules, --parents, and unpacking local archives for ADD.
"""
from __future__ import annotations

import errno
import os
import posixpath
import stat
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from builder.errors import SourceError
from builder.layer.apply import apply_layer
from builder.layer.compression import detect_compression, open_uncompressed
from builder.layer.limits import ExpandLimit
from builder.layer.merged import copy_xattrs
from builder.layer.pathmatch import PathMatcher
from builder.layer.tar import CHUNK, remove_path, resolve_in_root
from builder.sandbox import symbolic
from builder.sandbox.dest import lchown, mkdir_all, resolve_chown
from builder.layer.sources import SourceDir, SourceMatch, has_wildcards, join, relto, resolve_sources
from builder.solve import ops


@dataclass(kw_only=True)
class _Copier:
    root: Path
    owner: tuple[int, int] | None
    reset_owner: bool
    chmod: int | None
    exclude: PathMatcher
    ignore: PathMatcher
    inodes: dict[tuple[int, int], Path] = field(default_factory=dict)
    chmod_symbolic: str = ""

    def ids(self, st: os.stat_result) -> tuple[int, int]:
        if self.owner is not None:
            return self.owner
        return (0, 0) if self.reset_owner else (st.st_uid, st.st_gid)

    def meta(self, dst: Path, st: os.stat_result, src: Path) -> None:
        lchown(dst, *self.ids(st))
        copy_xattrs(src, dst)
        if not stat.S_ISLNK(st.st_mode):
            os.chmod(dst, self.mode_of(st))
        os.utime(dst, ns=(st.st_mtime_ns, st.st_mtime_ns), follow_symlinks=False)

    def mode_of(self, st: os.stat_result) -> int:
        """The copy's mode: --chmod's (octal, or symbolic over the source's), else the source's."""
        if self.chmod is not None:
            return self.chmod
        own = stat.S_IMODE(st.st_mode)
        if self.chmod_symbolic:
            return symbolic.apply(self.chmod_symbolic, own, is_dir=stat.S_ISDIR(st.st_mode))
        return own

    def copy_nondir(self, src: Path, st: os.stat_result, dst: Path) -> None:
        m = st.st_mode
        key = (st.st_dev, st.st_ino)
        if stat.S_ISREG(m) and st.st_nlink > 1 and key in self.inodes:
            remove_path(dst)
            os.link(self.inodes[key], dst, follow_symlinks=False)
            return
        try:
            dst_st: os.stat_result | None = os.lstat(dst)
        except FileNotFoundError:
            dst_st = None
        if dst_st is not None and not (stat.S_ISREG(m) and stat.S_ISREG(dst_st.st_mode)
                                       and dst_st.st_nlink == 1):
            remove_path(dst)
        if stat.S_ISREG(m):
            _copy_file(src, dst)
            if st.st_nlink > 1:
                self.inodes[key] = dst
        elif stat.S_ISLNK(m):
            os.symlink(os.readlink(os.fsencode(src)), dst)
        elif stat.S_ISCHR(m) or stat.S_ISBLK(m):
            try:
                os.mknod(dst, stat.S_IFMT(m) | 0o600, st.st_rdev)
            except PermissionError:
                return
        elif stat.S_ISFIFO(m):
            os.mkfifo(dst, 0o600)
        else:
            return   # sockets are not copied
        self.meta(dst, st, src)

    def copy_tree(self, src: Path, dst: Path, rel_copy: str, rel_root: str,
                  ensure: Callable[[], None]) -> None:
        """Copy the contents of directory `src` into `dst`; `ensure()` creates dst lazily."""
        for name in sorted(os.listdir(os.fsencode(src))):
            n = os.fsdecode(name)
            s, d = src / n, dst / n
            rc, rr = join(rel_copy, n), join(rel_root, n)
            st = os.lstat(s)
            excluded = self.exclude.matches(rc) or self.ignore.matches(rr)
            if stat.S_ISDIR(st.st_mode):
                if excluded and not (self.exclude.may_match_below(rc) or self.ignore.may_match_below(rr)):
                    continue
                self.copy_dir(s, st, d, rc, rr, ensure, lazy=excluded)
            elif not excluded:
                ensure()
                self.copy_nondir(s, st, d)

    def copy_dir(self, src: Path, st: os.stat_result, dst: Path, rel_copy: str, rel_root: str,
                 ensure_parent: Callable[[], None], *, lazy: bool = False, top: bool = False) -> None:
        state = {"done": False, "created": False}

        def ensure() -> None:
            if state["done"]:
                return
            ensure_parent()
            try:
                dst_st = os.lstat(dst)
                if not stat.S_ISDIR(dst_st.st_mode):
                    if top:
                        raise SourceError(f"cannot copy a directory to non-directory /{relto(self.root, dst)}")
                    remove_path(dst)
                    raise FileNotFoundError
            except FileNotFoundError:
                os.mkdir(dst, 0o700)
                state["created"] = True
            state["done"] = True

        if not lazy:
            ensure()
        self.copy_tree(src, dst, rel_copy, rel_root, ensure)
        if state["done"] and (state["created"] or not top):
            self.meta(dst, st, src)


def _copy_file(src: Path, dst: Path) -> None:
    sfd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        dfd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            _copy_fds(sfd, dfd)
        finally:
            os.close(dfd)
    finally:
        os.close(sfd)


def _copy_fds(sfd: int, dfd: int) -> None:
    try:
        while os.copy_file_range(sfd, dfd, 64 * CHUNK) > 0:
            pass
        return
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM):
            raise
    while True:
        b = os.read(sfd, CHUNK)
        if not b:
            return
        view = memoryview(b)
        while view:
            view = view[os.write(dfd, view):]


def _is_archive(path: Path) -> bool:
    """Docker's rule: (optionally compressed) content whose first tar header parses."""
    try:
        with open(path, "rb") as f:
            if detect_compression(f.read(6)) == "uncompressed":
                f.seek(0)
                block = f.read(512)
                if len(block) < 512:
                    return False
                try:
                    tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
                    return True
                except tarfile.HeaderError:
                    return False
            f.seek(0)
            with open_uncompressed(f) as u:
                block = u.read(512)
            tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
            return True
    except Exception:  # noqa: BLE001 - any decoder/format error means "not an archive"
        return False


def copy_action(root: Path, a: ops.Copy, src: SourceDir, *, limit: ExpandLimit = ExpandLimit()) -> None:
    """Copy (ADD: or unpack) the sources of `a` from `src` into `root`. An archive that expands
    beyond `limit` (for its size on disk) raises LayerError naming it, before the file that
    passes the limit is written."""
    ignore = PathMatcher(src.excludes)
    matches: list[SourceMatch] = []
    for pat in a.src_paths:
        found = resolve_sources(src.path, pat, follow_symlinks=a.follow_symlinks,
                                allow_wildcard=a.allow_wildcard, ignore=ignore)
        if not found and not (a.allow_wildcard and has_wildcards(pat) and a.allow_empty_wildcard):
            raise SourceError(f"{pat}: not found")
        matches.extend(found)
    owner = resolve_chown(root, a.chown)
    cp = _Copier(root=root, owner=owner, reset_owner=src.reset_owner,
                 chmod=None if a.chmod is None else a.chmod & 0o7777, chmod_symbolic=a.chmod_symbolic,
                 exclude=PathMatcher(a.exclude), ignore=ignore)
    for m in matches:
        cp.inodes.clear()
        _copy_one(root, cp, a, m, src, limit)


def _copy_one(root: Path, cp: _Copier, a: ops.Copy, m: SourceMatch, src: SourceDir,
              limit: ExpandLimit) -> None:
    try:
        st = os.lstat(m.host)
    except FileNotFoundError:
        raise SourceError(f"{m.rel}: not found") from None
    dirs_owner = cp.owner or (0, 0)
    dirs_mode = cp.chmod & 0o777 if cp.chmod is not None else 0o755    # directories it creates (BuildKit v0.25)
    dest_slash = a.dest.endswith("/")
    dst = resolve_in_root(root, a.dest)
    if not a.create_dest_path and not (dst if dest_slash else dst.parent).is_dir():
        raise SourceError(f"{a.dest}: destination directory does not exist")
    noop: Callable[[], None] = lambda: None  # noqa: E731
    if a.parents:
        mkdir_all(root, dst, dirs_mode, dirs_owner)
        target = _parents_dirs(root, cp, src, m, dst)
    elif stat.S_ISDIR(st.st_mode):
        # A directory's contents are copied; a destination it creates is a new 0755 directory
        # owned by --chown or root, never a copy of the source directory's own metadata.
        new_dest = dest_slash or not os.path.lexists(dst)
        mkdir_all(root, dst if new_dest else dst.parent, dirs_mode, dirs_owner)
        cp.copy_dir(m.host, st, dst, "", m.rel, noop, top=True)
        return
    elif a.unpack and stat.S_ISREG(st.st_mode) and _is_archive(m.host):
        mkdir_all(root, dst, dirs_mode, dirs_owner)
        with open(m.host, "rb") as f, open_uncompressed(f) as u:
            apply_layer(u, dst, whiteouts="archive", max_bytes=limit.budget(os.fstat(f.fileno()).st_size),
                        what=f"archive {m.rel}", owner=cp.owner)
        return
    elif dest_slash or dst.is_dir():
        mkdir_all(root, dst, dirs_mode, dirs_owner)
        target = dst / posixpath.basename(m.rel)
    else:
        mkdir_all(root, dst.parent, dirs_mode, dirs_owner)
        target = dst
    if stat.S_ISDIR(st.st_mode):
        cp.copy_dir(m.host, st, target, "", m.rel, noop, top=True)
    else:
        if cp.exclude.matches(posixpath.basename(m.rel)):
            return
        cp.copy_nondir(m.host, st, target)


def _parents_dirs(root: Path, cp: _Copier, src: SourceDir, m: SourceMatch, dst: Path) -> Path:
    """For --parents: create dst/<dirs of rel_base> with the source dirs' metadata."""
    parts = [p for p in m.rel_base.split("/") if p]
    cur = dst
    for i, comp in enumerate(parts[:-1]):
        # resolved inside root: a symlink already in the image is followed within it, never on
        # the host (the worker works on host paths, not in a chroot)
        cur = resolve_in_root(root, relto(root, cur) + "/" + comp)
        if not os.path.lexists(cur):
            s = resolve_in_root(src.path, join(m.base, "/".join(parts[: i + 1])))
            mkdir_all(root, cur.parent, 0o755, (0, 0))     # a dangling link's target, inside root
            os.mkdir(cur, 0o700)
            cp.meta(cur, os.lstat(s), s)
        elif not os.path.isdir(cur):
            raise SourceError(f"/{relto(root, cur)}: not a directory")
    return resolve_in_root(root, relto(root, cur) + "/" + parts[-1], follow_final=False) if parts else dst
