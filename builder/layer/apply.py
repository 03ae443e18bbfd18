"""Safe layer application: our own extractor, never `tarfile.extractall`. Layers and archives are
hostile input: nothing here ever touches a path outside `dest`.

Every name is made relative and resolved inside `dest` one component at a time (symlinks followed
only inside it, no ".." in layer names, absolute names made relative); hard links only to targets
inside; whiteouts handled explicitly ("overlay": turned into overlay whiteouts/opaque xattrs, the
entry's parents resolved in the merged tree of `lowers` + dest as containerd does; "delete":
applied to a full tree; "archive": ADD of a local archive, as BuildKit extracts one: `.wh.*`
entries are dropped and names are cleaned inside dest); `.wh.`, `.wh..` and `.wh...` (whiteouts
naming their own directory or its parent) refused; device nodes other than whiteouts (char 0/0)
skipped, as containerd does in a user namespace, so root and rootless builds give one tree;
overlay's own xattrs (`user.overlay.*`, `trusted.overlay.*`) in a layer never reach the disk;
sizes capped against decompression bombs (builder.layer.limits).
"""
from __future__ import annotations

import lzma
import os
import posixpath
import stat
import sys
import tarfile
import zlib
from pathlib import Path
from typing import BinaryIO, Literal, Sequence

from builder.errors import LayerError, PybuildError
from builder.layer.limits import DEFAULT_MAX_BYTES, CappedReader, expansion_error
from builder.layer.merged import SKIP_XATTR_PREFIXES, MergedView, lstat_or_none
from builder.layer.tar import (CHUNK, OPAQUE_WHITEOUT, WHITEOUT_PREFIX, _rel, lchown_mapped,
                               _split, remove_path, resolve_in_root)

__all__ = ["apply_layer"]

_OPQ = OPAQUE_WHITEOUT.encode()
_WH = WHITEOUT_PREFIX.encode()
_MAX_ID = (1 << 32) - 2
MAX_HEADER_BYTES = 16 << 20     # one PAX header / GNU long name (many large xattrs fit)
MAX_DEPTH = 128                 # path components of one entry name: each costs a walk of the path
_MAX_CACHED = 1 << 16


def apply_layer(tar_stream: BinaryIO, dest: Path, *, whiteouts: Literal["overlay", "delete", "archive"],
                max_bytes: int | None = DEFAULT_MAX_BYTES, what: str = "layer",
                lowers: Sequence[Path] = (), owner: tuple[int, int] | None = None) -> None:
    """Apply an (uncompressed) layer tar read from `tar_stream` onto directory `dest`, streaming.

    whiteouts="overlay": `dest` is the layer's own directory over `lowers` (top first); `.wh.x` →
    char device 0/0 `x`, `.wh..wh..opq` → xattr user.overlay.opaque=y; parents are resolved in
    the merged tree and copied up when only a lower has them. "delete": `.wh.x` removes x, an
    opaque marker empties the dir of what earlier layers put there. "archive" (ADD of a local
    archive, as BuildKit v0.25): `.wh.*` entries are skipped, `a/../b` is `b`, and a name that
    climbs out of dest (`../x`) is refused ("invalid entry name"). `owner` (ADD --chown) replaces
    every entry's owner. A non-dir replaces what is
    at its path; a dir merges. Owners (lchown), modes (after chown), mtimes and xattrs are applied.

    More than `max_bytes` of tar stream, or of file contents, raise LayerError naming `what`
    (before the file that passes it is written); a malformed or unsafe entry raises LayerError
    naming `what` and the entry; unmapped owners raise IdMappingError. On an error, what was
    written so far stays in `dest`: the caller owns it and removes it."""
    ap = _Applier(Path(dest), whiteouts, max_bytes, what, lowers)
    ap.owner = owner
    try:
        with tarfile.open(fileobj=CappedReader(tar_stream, max_bytes, what=what),  # type: ignore[call-overload]
                          mode="r|", encoding="utf-8", errors="surrogateescape", bufsize=CHUNK,
                          tarinfo=_HeaderCappedTarInfo) as tf:
            for member in tf:
                try:
                    ap.apply(tf, member)
                except (OSError, ValueError, OverflowError) as e:
                    raise LayerError(f"{what}: entry {member.name!r}: {_reason(e)}") from e
        ap.finish()
    except LayerError as e:
        if e.message.startswith(what):
            raise
        raise LayerError(f"{what}: {e.message}") from e
    except PybuildError:
        raise
    except _decode_errors() as e:
        raise LayerError(f"{what}: not a readable tar stream: {_reason(e)}") from e


class _HeaderCappedTarInfo(tarfile.TarInfo):
    """tarfile reads a PAX header or a GNU long name whole into memory: one larger than
    MAX_HEADER_BYTES is refused before it is read."""

    def _proc_pax(self, tarfile):  # type: ignore[no-untyped-def]
        _check_header(self)
        return super()._proc_pax(tarfile)  # type: ignore[misc]

    def _proc_gnulong(self, tarfile):  # type: ignore[no-untyped-def]
        _check_header(self)
        return super()._proc_gnulong(tarfile)  # type: ignore[misc]


def _check_header(ti: tarfile.TarInfo) -> None:
    if ti.size > MAX_HEADER_BYTES:
        raise LayerError(f"extended header of {ti.size} bytes (more than {MAX_HEADER_BYTES}) refused")


def _reason(e: BaseException) -> str:
    return (e.strerror if isinstance(e, OSError) and e.strerror else str(e)) or type(e).__name__


def _decode_errors() -> tuple[type[BaseException], ...]:
    errs: tuple[type[BaseException], ...] = (tarfile.TarError, EOFError, OSError, ValueError,
                                             OverflowError, zlib.error, lzma.LZMAError, RecursionError)
    zstd = sys.modules.get("zstandard")
    return errs + ((zstd.ZstdError,) if zstd is not None else ())


class _Applier:
    def __init__(self, dest: Path, whiteouts: str, max_bytes: int | None, what: str,
                 lowers: Sequence[Path]) -> None:
        self.dest = dest
        self.destb = os.fsencode(dest)
        self.whiteouts = whiteouts
        self.max_bytes = max_bytes
        self.what = what
        self.total = 0
        self.dir_times: list[tuple[bytes, int]] = []
        self.unpacked: set[bytes] = set()
        self.view = MergedView(dest, lowers) if whiteouts == "overlay" else None
        # Directories this layer made or found, by name: an entry under one needs no new walk.
        # Only removing a directory or hiding (whiteout, opaque, copy-up) can change what a
        # name resolves to, and every such change clears it.
        self.dirs: dict[tuple[bytes, ...], tuple[bytes, tuple[bytes, ...]]] = {}
        self.owner: tuple[int, int] | None = None

    def _parts(self, name: str) -> list[bytes]:
        if self.whiteouts == "archive":
            clean = posixpath.normpath(name.lstrip("/") or ".")
            if clean == ".." or clean.startswith("../"):
                raise LayerError(f"{self.what}: invalid entry name {name!r}")
            return _split(posixpath.normpath("/" + name).lstrip("/"))
        parts = _split(name)
        if b".." in parts:
            raise LayerError(f"{self.what}: entry {name!r} climbs out of the root with '..'")
        if len(parts) > MAX_DEPTH:
            raise LayerError(f"{self.what}: entry {name[:200]!r}... is more than {MAX_DEPTH} directories deep")
        return parts

    def _remove(self, path: bytes) -> None:
        st = lstat_or_none(path)
        if st is not None:
            if stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode):
                self.dirs.clear()
            remove_path(Path(os.fsdecode(path)))

    def _forget_if_shadowing(self, path: bytes, logical: tuple[bytes, ...], isdir: bool) -> None:
        """Clear `dirs` when an entry replaces or hides a symlink, or a directory with a
        non-directory: names under it may resolve elsewhere now."""
        st = lstat_or_none(path)
        if st is not None:
            link, is_dir = stat.S_ISLNK(st.st_mode), stat.S_ISDIR(st.st_mode)
        elif self.view is not None:
            low = self.view.lower(logical)
            link = low.kind == "other" and stat.S_ISLNK(os.lstat(low.other).st_mode)
            is_dir = low.kind == "dir"
        else:
            return
        if link or (is_dir and not isdir):
            self.dirs.clear()

    def _parent(self, parts: list[bytes], *, create: bool = True) -> tuple[bytes | None, tuple[bytes, ...]]:
        known = self.dirs.get(tuple(parts[:-1]))
        if known is not None:
            return known
        host, logical = self._walk(parts, create=create)
        if host is not None and create:
            self._remember(tuple(parts[:-1]), host, logical)
        return host, logical

    def _remember(self, key: tuple[bytes, ...], host: bytes, logical: tuple[bytes, ...]) -> None:
        if len(self.dirs) >= _MAX_CACHED:
            self.dirs.clear()
        self.dirs[key] = (host, logical)

    def _walk(self, parts: list[bytes], *, create: bool) -> tuple[bytes | None, tuple[bytes, ...]]:
        """Host path of the directory holding `parts` (created unless `create` is false: then
        None when it is not there) and its resolved path inside the root."""
        if self.view is not None:
            resolved = self.view.resolve(parts[:-1], follow_final=True)
            if not create and any(n.kind != "dir" for _, n in resolved):
                return None, ()
            return self.view.ensure_dir(resolved), tuple(n for n, _ in resolved)
        host = os.fsencode(resolve_in_root(self.dest, _rel(parts[:-1])))
        rel = host[len(self.destb) + 1:] if host != self.destb else b""
        if not create:
            st = lstat_or_none(host)
            return (host if st is not None and stat.S_ISDIR(st.st_mode) else None), ()
        cur = self.destb
        for c in _split(rel):
            cur += b"/" + c
            self._mkdir(cur, ())
        return host, tuple(_split(rel))

    def _mkdir(self, path: bytes, logical: tuple[bytes, ...]) -> None:
        if self.view is not None:
            self.view.make_dir(path, logical)
            return
        st = lstat_or_none(path)
        if st is not None and stat.S_ISDIR(st.st_mode):
            return
        if st is not None:
            self._remove(path)
        os.mkdir(path, 0o755)

    def apply(self, tf: tarfile.TarFile, m: tarfile.TarInfo) -> None:
        parts = self._parts(m.name)
        if not parts:
            if m.isdir():
                self._meta(self.destb, m)
            return
        if parts[-1].startswith(_WH):
            if self.whiteouts != "archive":
                self._whiteout(parts, m.name)
            return
        if (m.ischr() or m.isblk()) and not (m.ischr() and m.devmajor == 0 and m.devminor == 0):
            return   # device nodes: skipped everywhere (containerd skips them in a user namespace)
        if not (m.isdir() or m.islnk() or m.isreg() or m.issym() or m.ischr() or m.isfifo()):
            raise LayerError(f"{self.what}: entry {m.name!r} has unsupported type {m.type!r}")
        if m.isreg():
            self._charge(m)
        parent, logical = self._parent(parts)
        assert parent is not None
        path = parent + b"/" + parts[-1]
        self.unpacked.add(path)
        self._forget_if_shadowing(path, logical + (parts[-1],), m.isdir())
        if m.isdir():
            self._mkdir(path, logical + (parts[-1],))
            self._remember(tuple(parts), path, logical + (parts[-1],))
        elif m.islnk():
            self._hardlink(path, m)
            return
        else:
            self._remove(path)
            if m.isreg():
                self._write_file(tf, m, path)
            elif m.issym():
                os.symlink(os.fsencode(m.linkname), path)
            elif m.ischr():
                os.mknod(path, stat.S_IFCHR | 0o600, 0)
            else:
                os.mkfifo(path, 0o600)
        self._meta(path, m)

    def _charge(self, m: tarfile.TarInfo) -> None:
        """Count a file's bytes before any is written (a sparse entry declares its full size)."""
        self.total += m.size
        if self.max_bytes is not None and self.total > self.max_bytes:
            raise expansion_error(f"{self.what} (at entry {m.name!r})", self.max_bytes)

    def _write_file(self, tf: tarfile.TarFile, m: tarfile.TarInfo, path: bytes) -> None:
        src = tf.extractfile(m)
        assert src is not None
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with open(fd, "wb") as out:
            remaining = m.size
            while remaining > 0:
                b = src.read(min(CHUNK, remaining))
                if not b:
                    raise LayerError(f"{self.what}: entry {m.name!r} is truncated")
                out.write(b)
                remaining -= len(b)

    def _link_target(self, m: tarfile.TarInfo) -> bytes:
        """Host path of a hard link's target inside dest (copied up from a lower if need be)."""
        tparts = self._parts(m.linkname)
        if not tparts:
            raise LayerError(f"{self.what}: hard link {m.name!r} points to the root directory")
        if self.view is None:
            return os.fsencode(resolve_in_root(self.dest, _rel(tparts), follow_final=False))
        resolved = self.view.resolve(tparts, follow_final=False)
        node = resolved[-1][1] if resolved else self.view.root
        if node.kind == "dir":
            raise LayerError(f"{self.what}: hard link {m.name!r} points to a directory")
        if node.kind == "missing":
            raise LayerError(f"{self.what}: hard link {m.name!r} points to missing {m.linkname!r}")
        if node.other.startswith(self.view.upper + b"/"):
            return node.other
        target = self.view.ensure_dir(resolved[:-1]) + b"/" + resolved[-1][0]
        self.view.copy_up(node.other, target)
        return target

    def _hardlink(self, path: bytes, m: tarfile.TarInfo) -> None:
        target = self._link_target(m)
        tst = lstat_or_none(target)
        if tst is None:
            raise LayerError(f"{self.what}: hard link {m.name!r} points to missing {m.linkname!r}")
        if stat.S_ISDIR(tst.st_mode):
            raise LayerError(f"{self.what}: hard link {m.name!r} points to a directory")
        st = lstat_or_none(path)
        if st is not None:
            if os.path.samestat(st, tst):
                self._meta(path, m)
                return
            self._remove(path)
        os.link(target, path, follow_symlinks=False)
        if not stat.S_ISLNK(tst.st_mode):
            self._meta(path, m)

    def _whiteout(self, parts: list[bytes], name: str) -> None:
        base = parts[-1]
        if base != _OPQ and base.startswith(_WH + _WH):
            return   # other AUFS metadata (.wh..wh.plnk etc.): ignored, as containerd does
        victim = base[len(_WH):]
        if base != _OPQ and victim in (b"", b".", b".."):
            raise LayerError(f"{self.what}: whiteout {name!r} names no file (it would delete its own "
                             "directory or its parent): refused")
        parent, _ = self._parent(parts, create=False)
        if parent is None:
            return   # nothing there to hide
        self.dirs.clear()
        if base == _OPQ:
            self._opaque(parent)
            return
        remove_path(Path(os.fsdecode(parent + b"/" + victim)))
        if self.view is not None:
            os.mknod(parent + b"/" + victim, stat.S_IFCHR | 0o600, 0)
            self.unpacked.add(parent + b"/" + victim)

    def _opaque(self, dirpath: bytes) -> None:
        if self.view is not None:
            os.setxattr(dirpath, "user.overlay.opaque", b"y", follow_symlinks=False)
            return
        for child in os.listdir(dirpath):
            if dirpath + b"/" + child not in self.unpacked:
                remove_path(Path(os.fsdecode(dirpath + b"/" + child)))

    def _meta(self, path: bytes, m: tarfile.TarInfo) -> None:
        if not (0 <= m.uid <= _MAX_ID and 0 <= m.gid <= _MAX_ID):
            raise LayerError(f"{self.what}: entry {m.name!r} has an invalid owner {m.uid}:{m.gid}")
        uid, gid = self.owner if self.owner is not None else (m.uid, m.gid)
        lchown_mapped(path, uid, gid, what=repr(m.name))
        for k, v in sorted(m.pax_headers.items()):
            if k.startswith("SCHILY.xattr.") and not k[13:].startswith(SKIP_XATTR_PREFIXES):
                try:
                    os.setxattr(path, k[13:], v.encode("utf-8", "surrogateescape"), follow_symlinks=False)
                except OSError:
                    pass   # xattrs are best effort (unsupported fs, security.* without privilege)
        if not m.issym():
            os.chmod(path, m.mode & 0o7777)
        if m.isdir():
            self.dir_times.append((path, int(m.mtime)))
        else:
            os.utime(path, (int(m.mtime), int(m.mtime)), follow_symlinks=False)

    def finish(self) -> None:
        if self.view is not None:
            self.view.restore_times()
        for path, mtime in reversed(self.dir_times):
            if lstat_or_none(path) is not None:
                os.utime(path, (mtime, mtime), follow_symlinks=False)
