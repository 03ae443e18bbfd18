"""Safe layer application: our own extractor, never `tarfile.extractall`.

Every path is resolved inside `dest` one component at a time (symlinks followed only inside it,
no "..", absolute names made relative), hardlinks only to targets inside, whiteouts handled
explicitly ("overlay": turned into overlay whiteouts/opaque xattrs; "delete": applied to a full
tree; "archive": ADD of a local archive, as BuildKit extracts one: `.wh.*` entries are dropped and
names are cleaned inside dest), sizes capped against bombs.
"""
from __future__ import annotations

import os
import posixpath
import stat
import tarfile
from pathlib import Path
from typing import BinaryIO, Literal

from builder.errors import LayerError
from builder.layer.tar import (CHUNK, OPAQUE_WHITEOUT, WHITEOUT_PREFIX, _rel, lchown_mapped,
                     _split, remove_path, resolve_in_root)

__all__ = ["apply_layer"]

def apply_layer(tar_stream: BinaryIO, dest: Path, *, whiteouts: Literal["overlay", "delete", "archive"],
                max_bytes: int = 1 << 40) -> None:
    """Apply an (uncompressed) layer tar read from `tar_stream` onto directory `dest`, streaming.

    Every name is made relative and resolved inside `dest` (symlinks in parent components are
    followed only inside dest; ".." refused). whiteouts="overlay": `.wh.x` → char device 0/0 `x`,
    `.wh..wh..opq` → xattr user.overlay.opaque=y on the dir. "delete": `.wh.x` removes x, an opaque
    marker empties the dir of what earlier layers put there. "archive" (ADD of a local archive,
    BuildKit 20.10's behaviour): `.wh.*` entries are skipped, and names are cleaned as if rooted at
    dest (`a/../b` is `b`, `../x` is `x`) instead of refused. A non-dir replaces what is at its path; a dir merges. Owners
    (lchown), modes (after chown), mtimes and xattrs are applied; device nodes other than 0/0
    are skipped when mknod is not permitted. Regular file bytes above `max_bytes` raise
    LayerError; unmapped owners raise IdMappingError."""
    ap = _Applier(Path(dest), whiteouts, max_bytes)
    with tarfile.open(fileobj=tar_stream, mode="r|", encoding="utf-8",  # type: ignore[call-overload]
                      errors="surrogateescape", bufsize=CHUNK) as tf:
        for member in tf:
            ap.apply(tf, member)
    ap.finish()


class _Applier:
    def __init__(self, dest: Path, whiteouts: str, max_bytes: int) -> None:
        self.dest = dest
        self.whiteouts = whiteouts
        self.max_bytes = max_bytes
        self.total = 0
        self.dir_times: list[tuple[Path, int]] = []
        self.unpacked: set[bytes] = set()

    def _parts(self, name: str) -> list[bytes]:
        if self.whiteouts == "archive":
            return _split(posixpath.normpath("/" + name).lstrip("/"))
        parts = _split(name)
        if b".." in parts:
            raise LayerError(f"layer entry {name!r} climbs out of the root with '..'")
        return parts

    def _place(self, parts: list[bytes]) -> Path:
        """Host path for an entry: parents resolved (and created) inside dest, final not followed."""
        parent = resolve_in_root(self.dest, _rel(parts[:-1]), follow_final=True) if len(parts) > 1 \
            else self.dest
        if not parent.is_dir() or parent.is_symlink():
            if os.path.lexists(parent):
                remove_path(parent)
            os.makedirs(parent, 0o755, exist_ok=True)
            # makedirs may have had to create parents: those are resolved paths inside dest
        return Path(os.fsdecode(os.fsencode(parent) + b"/" + parts[-1]))

    def apply(self, tf: tarfile.TarFile, m: tarfile.TarInfo) -> None:
        parts = self._parts(m.name)
        if not parts:
            if m.isdir():
                self._meta(self.dest, m)
            return
        base = parts[-1]
        if base.startswith(WHITEOUT_PREFIX.encode()):
            if self.whiteouts != "archive":
                self._whiteout(parts)
            return
        path = self._place(parts)
        self.unpacked.add(os.fsencode(path))
        if m.isdir():
            try:
                st = os.lstat(path)
                if not stat.S_ISDIR(st.st_mode):
                    remove_path(path)
                    os.mkdir(path, 0o700)
            except FileNotFoundError:
                os.mkdir(path, 0o700)
            self._meta(path, m)
            return
        if m.islnk():
            self._hardlink(path, m)
            return
        remove_path(path)
        if m.isreg():
            self.total += m.size
            if self.total > self.max_bytes:
                raise LayerError(f"layer expands beyond the {self.max_bytes}-byte limit")
            self._write_file(tf, m, path)
        elif m.issym():
            os.symlink(os.fsencode(m.linkname), path)
        elif m.ischr() or m.isblk():
            kind = stat.S_IFCHR if m.ischr() else stat.S_IFBLK
            try:
                os.mknod(path, kind | 0o600, os.makedev(m.devmajor, m.devminor))
            except PermissionError:
                return   # devices cannot be created in a user namespace; containerd skips them too
        elif m.isfifo():
            os.mkfifo(path, 0o600)
        else:
            raise LayerError(f"layer entry {m.name!r} has unsupported type {m.type!r}")
        self._meta(path, m)

    def _write_file(self, tf: tarfile.TarFile, m: tarfile.TarInfo, path: Path) -> None:
        src = tf.extractfile(m)
        assert src is not None
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with open(fd, "wb") as out:
            remaining = m.size
            while remaining > 0:
                b = src.read(min(CHUNK, remaining))
                if not b:
                    raise LayerError(f"layer entry {m.name!r} is truncated")
                out.write(b)
                remaining -= len(b)

    def _hardlink(self, path: Path, m: tarfile.TarInfo) -> None:
        tparts = self._parts(m.linkname)
        if not tparts:
            raise LayerError(f"hard link {m.name!r} has an empty target")
        target = resolve_in_root(self.dest, _rel(tparts), follow_final=False)
        try:
            tst = os.lstat(target)
        except FileNotFoundError:
            raise LayerError(f"hard link {m.name!r} points to missing {m.linkname!r}") from None
        if stat.S_ISDIR(tst.st_mode):
            raise LayerError(f"hard link {m.name!r} points to a directory")
        if os.path.lexists(path):
            if os.path.samestat(os.lstat(path), tst):
                self._meta(path, m)
                return
            remove_path(path)
        os.link(target, path, follow_symlinks=False)
        if not stat.S_ISLNK(tst.st_mode):
            self._meta(path, m)

    def _whiteout(self, parts: list[bytes]) -> None:
        base = parts[-1]
        dirpath = self._place(parts[:-1] + [b"x"]).parent if len(parts) > 1 else self.dest
        if base == OPAQUE_WHITEOUT.encode():
            if self.whiteouts == "overlay":
                os.setxattr(dirpath, "user.overlay.opaque", b"y", follow_symlinks=False)
            else:
                for name in os.listdir(os.fsencode(dirpath)):
                    child = os.fsencode(dirpath) + b"/" + name
                    if child not in self.unpacked:
                        remove_path(Path(os.fsdecode(child)))
            return
        if base.startswith(b".wh..wh."):
            return   # other AUFS metadata (.wh..wh.plnk etc.): ignored, as containerd does
        victim = Path(os.fsdecode(os.fsencode(dirpath) + b"/" + base[len(WHITEOUT_PREFIX):]))
        remove_path(victim)
        if self.whiteouts == "overlay":
            os.mknod(victim, stat.S_IFCHR | 0o600, 0)
            self.unpacked.add(os.fsencode(victim))

    def _meta(self, path: Path, m: tarfile.TarInfo) -> None:
        lchown_mapped(path, m.uid, m.gid, what=repr(m.name))
        for k, v in sorted(m.pax_headers.items()):
            if k.startswith("SCHILY.xattr."):
                try:
                    os.setxattr(path, k[len("SCHILY.xattr."):],
                                v.encode("utf-8", "surrogateescape"), follow_symlinks=False)
                except OSError:
                    pass   # xattrs are best effort (unsupported fs, security.* without privilege)
        if not m.issym():
            os.chmod(path, m.mode & 0o7777)
        if m.isdir():
            self.dir_times.append((path, int(m.mtime)))
        else:
            os.utime(path, (int(m.mtime), int(m.mtime)), follow_symlinks=False)

    def finish(self) -> None:
        for path, mtime in reversed(self.dir_times):
            try:
                os.utime(path, (mtime, mtime), follow_symlinks=False)
            except FileNotFoundError:
                pass
