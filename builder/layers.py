"""Layer diffs, deterministic layer tars, and safe layer application.

- `overlay_changes(upper)` / `tree_changes(lower, upper)` turn a snapshot's changes into `Change`s.
- `write_layer(root, changes, sink, compression=...)` writes a deterministic tar of those changes,
  compressing and hashing in one streaming pass (diff_id of the tar, digest/size of what reaches
  the sink).
- `open_uncompressed(f)` detects gzip/zstd/bzip2/xz/plain by magic bytes.
- `apply_layer(tar_stream, dest, whiteouts=...)` is our own extractor: never `extractall`, every
  path resolved inside `dest` (symlinks followed only inside it), whiteouts explicit, sizes capped.

Paths in `Change` are relative to the root, "/"-separated, without a leading "/", and keep the
exact bytes of names through `os.fsdecode` (surrogateescape).

Compression is pinned so digests are reproducible: gzip through python-isal `igzip` at level
`ISAL_LEVEL` when importable (else stdlib gzip at `GZIP_LEVEL`), header without file name and with
mtime 0; zstd through `zstandard` at level `ZSTD_LEVEL` with `ZSTD_THREADS` worker threads (zstd
output is identical for any thread count >= 1, and differs from threads=0, so we always use >= 1).
"""
from __future__ import annotations

import bz2
import errno
import gzip
import io
import lzma
import os
import shutil
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator, Literal, Sequence

from .digest import Digest, DigestingWriter
from .errors import IdMappingError, LayerError

__all__ = [
    "Change", "LayerStats", "overlay_changes", "tree_changes", "repair_overlay_hardlinks",
    "write_layer", "open_uncompressed",
    "apply_layer", "resolve_in_root", "remove_path", "WHITEOUT_PREFIX", "OPAQUE_WHITEOUT",
    "ID_MAPPING_HINT",
]

WHITEOUT_PREFIX = ".wh."
OPAQUE_WHITEOUT = ".wh..wh..opq"
ISAL_LEVEL = 1
GZIP_LEVEL = 6
ZSTD_LEVEL = 3
ZSTD_THREADS = 2
CHUNK = 1 << 20
_OPAQUE_XATTRS = ("user.overlay.opaque", "trusted.overlay.opaque")
_SKIP_XATTR_PREFIXES = ("user.overlay.", "trusted.overlay.", "security.selinux")
ID_MAPPING_HINT = ("this needs a subordinate uid/gid range: add one to /etc/subuid and /etc/subgid, "
                   "e.g. `usermod --add-subuids 100000-165535 --add-subgids 100000-165535 $USER`")


@dataclass(frozen=True, slots=True, kw_only=True)
class Change:
    """One change of a diff: `add` (the entry at `path` as it is now in the upper/new tree),
    `delete` (path removed), `opaque` (directory whose lower contents are hidden)."""
    kind: Literal["add", "delete", "opaque"]
    path: str


@dataclass(frozen=True, slots=True, kw_only=True)
class LayerStats:
    diff_id: Digest
    digest: Digest
    size: int
    empty: bool


# ------------------------------------------------------------------ path helpers

def _split(rel: str | bytes) -> list[bytes]:
    b = os.fsencode(rel)
    return [c for c in b.split(b"/") if c not in (b"", b".")]


def _rel(parts: Iterable[bytes]) -> str:
    return os.fsdecode(b"/".join(parts))


def resolve_in_root(root: Path, rel: str | bytes, *, follow_final: bool = True) -> Path:
    """The host path of `rel` inside `root`, resolving symlinks as if `root` were "/".

    ".." never climbs above root, absolute link targets restart at root, components that do not
    exist are kept as they are. With `follow_final=False` a final symlink is not followed.
    Raises LayerError on symlink loops (> 40 hops)."""
    rootb = os.fsencode(root)
    pending = list(reversed(_split(rel)))
    resolved: list[bytes] = []
    hops = 0
    while pending:
        c = pending.pop()
        if c == b"..":
            if resolved:
                resolved.pop()
            continue
        cand = rootb + b"/" + b"/".join(resolved + [c])
        try:
            st = os.lstat(cand)
        except (FileNotFoundError, NotADirectoryError):
            resolved.append(c)
            continue
        if stat.S_ISLNK(st.st_mode) and (pending or follow_final):
            hops += 1
            if hops > 40:
                raise LayerError(f"too many levels of symbolic links resolving {os.fsdecode(rel)!r}")
            target = os.readlink(cand)
            if target.startswith(b"/"):
                resolved = []
            pending.extend(reversed([c2 for c2 in target.split(b"/") if c2 not in (b"", b".")]))
            continue
        resolved.append(c)
    return Path(os.fsdecode(rootb + b"/" + b"/".join(resolved))) if resolved else Path(root)


def remove_path(p: Path) -> None:
    """Remove whatever is at `p` (never following a symlink); no error if nothing is there."""
    try:
        st = os.lstat(p)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(p)
    else:
        os.unlink(p)


def _lgetxattr(p: bytes | str, name: str) -> bytes | None:
    try:
        return os.getxattr(p, name, follow_symlinks=False)
    except OSError:
        return None


# ------------------------------------------------------------------ diffs

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


def repair_overlay_hardlinks(upper: Path, lowers: Sequence[Path]) -> int:
    """Re-join hard links that an overlay copy-up split (overlayfs without an index, as in a
    user namespace, copies up only the path that was touched: after `chmod 600 /h2` the other
    links of that inode keep the old mode, while a full tree, and BuildKit, change them all).

    For each regular file in `upper` that looks like a metadata-only copy-up (link count 1, same
    size and mtime as the visible lower file, which has other links), the other paths of that
    lower inode that are still visible through the overlay are hard-linked into `upper` (missing
    parent dirs are created with the lower dirs' metadata), so `overlay_changes` reports them
    and `write_layer` writes them as one hard-link group. Content written through one link
    changes its mtime and is not repaired. `lowers` are top first. Returns the links made.
    Call after the step, on the unmounted upper dir, before `overlay_changes`."""
    up = os.fsencode(upper)
    lws = [os.fsencode(x) for x in lowers]
    cands: list[tuple[bytes, int, int]] = []      # (rel, lower index, lower inode)
    for rel, st in _regular_files(up, b""):
        if st.st_nlink != 1:
            continue
        hit = _visible_lower(lws, rel)
        if hit is None:
            continue
        i, lst = hit
        if stat.S_ISREG(lst.st_mode) and lst.st_nlink > 1 and lst.st_size == st.st_size \
                and lst.st_mtime_ns == st.st_mtime_ns and not _opaque_ancestor(up, rel):
            cands.append((rel, i, lst.st_ino))
    made = 0
    dir_times: dict[bytes, int] = {}
    for i in sorted({c[1] for c in cands}):
        want = {ino for _, j, ino in cands if j == i}
        siblings: dict[int, list[bytes]] = {}
        for rel, st in _regular_files(lws[i], b""):
            if st.st_ino in want:
                siblings.setdefault(st.st_ino, []).append(rel)
        for rel, j, ino in cands:
            if j != i:
                continue
            for sib in siblings.get(ino, []):
                if sib == rel or os.path.lexists(up + b"/" + sib):
                    continue
                hit = _visible_lower(lws, sib)
                if hit is None or hit[0] != i or not _make_parents(up, lws, sib, dir_times):
                    continue
                os.link(up + b"/" + rel, up + b"/" + sib)
                made += 1
    for d, mtime_ns in dir_times.items():
        os.utime(d, ns=(mtime_ns, mtime_ns), follow_symlinks=False)
    return made


def _regular_files(base: bytes, rel: bytes) -> Iterator[tuple[bytes, os.stat_result]]:
    d = base + b"/" + rel if rel else base
    for name in sorted(os.listdir(d)):
        r = rel + b"/" + name if rel else name
        st = os.lstat(d + b"/" + name)
        if stat.S_ISDIR(st.st_mode):
            yield from _regular_files(base, r)
        elif stat.S_ISREG(st.st_mode):
            yield r, st


def _opaque_ancestor(base: bytes, rel: bytes) -> bool:
    parts = rel.split(b"/")
    return any(_lgetxattr(base + b"/" + b"/".join(parts[:k]), x) == b"y"
               for k in range(1, len(parts)) for x in _OPAQUE_XATTRS)


def _visible_lower(lowers: list[bytes], rel: bytes) -> tuple[int, os.stat_result] | None:
    """(index, stat) of the lower that provides `rel` in the merged view, or None."""
    for i, low in enumerate(lowers):
        try:
            st = os.lstat(low + b"/" + rel)
        except FileNotFoundError:
            continue
        except NotADirectoryError:
            return None          # an ancestor is a file or a whiteout in this layer
        if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
            return None
        if any(_opaque_ancestor(higher, rel) for higher in lowers[:i]):
            return None          # an opaque ancestor in a higher layer hides this one
        return i, st
    return None


def _make_parents(up: bytes, lowers: list[bytes], rel: bytes, dir_times: dict[bytes, int]) -> bool:
    parts = rel.split(b"/")[:-1]
    for k in range(1, len(parts) + 1):
        sub = b"/".join(parts[:k])
        p = up + b"/" + sub
        try:
            if not stat.S_ISDIR(os.lstat(p).st_mode) or \
                    any(_lgetxattr(p, x) == b"y" for x in _OPAQUE_XATTRS):
                return False
            continue
        except FileNotFoundError:
            pass
        src = next((low + b"/" + sub for low in lowers if os.path.isdir(low + b"/" + sub)
                    and not os.path.islink(low + b"/" + sub)), None)
        if src is None:
            return False
        st = os.lstat(src)
        os.mkdir(p, 0o700)
        os.lchown(p, st.st_uid, st.st_gid)
        os.chmod(p, stat.S_IMODE(st.st_mode))
        dir_times[p] = st.st_mtime_ns
    return True


def _meta(st: os.stat_result) -> tuple[int, ...]:
    return (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
            st.st_mtime_ns, st.st_rdev)


def tree_changes(lower: Path, upper: Path) -> Iterator[Change]:
    """Changes between two full trees (copying snapshotter), sorted by name bytes, parents first.

    An entry only in upper, or whose type/mode/owner/mtime/size/rdev/link target (or, for regular
    files, link count: a new hard link to a lower file brings the file along) differs → add
    (a new directory brings all its descendants as adds); an entry only in lower → one delete (not
    its children). Regular files with equal metadata are assumed unchanged. A directory whose own
    metadata is equal is not emitted, but its children are compared. `upper` must be a copy that
    kept mtimes, owners and hard links (`cp -a`-like), else everything looks changed."""
    yield from _cmp_dir(os.fsencode(lower), os.fsencode(upper), [])


def _cmp_dir(lower: bytes, upper: bytes, parts: list[bytes]) -> Iterator[Change]:
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
            yield from _cmp_dir(lower, upper, p)
            continue
        changed = _meta(lst) != _meta(ust) or lst.st_size != ust.st_size \
            or (stat.S_ISREG(ust.st_mode) and lst.st_nlink != ust.st_nlink)
        if not changed and stat.S_ISLNK(ust.st_mode):
            changed = os.readlink(lower + sub + b"/" + name) != os.readlink(upper + sub + b"/" + name)
        if changed:
            yield Change(kind="add", path=_rel(p))


def _all_below(root: bytes, parts: list[bytes]) -> Iterator[Change]:
    d = root + b"/" + b"/".join(parts)
    for name in sorted(os.listdir(d)):
        p = parts + [name]
        yield Change(kind="add", path=_rel(p))
        if stat.S_ISDIR(os.lstat(d + b"/" + name).st_mode):
            yield from _all_below(root, p)


# ------------------------------------------------------------------ compression

class _Compressor:
    """write() compressed bytes into `out`; close() finishes the stream (does not close `out`)."""

    def __init__(self, out: DigestingWriter, compression: str) -> None:
        self._out = out
        self._z: BinaryIO | None
        if compression == "uncompressed":
            self._z = None
        elif compression == "gzip":
            try:
                from isal import igzip
                self._z = igzip.IGzipFile(filename="", mode="wb", fileobj=out,  # type: ignore[arg-type]
                                          compresslevel=ISAL_LEVEL, mtime=0)
            except ImportError:
                self._z = gzip.GzipFile(filename="", mode="wb", fileobj=out,  # type: ignore[arg-type]
                                        compresslevel=GZIP_LEVEL, mtime=0)
        elif compression == "zstd":
            import zstandard
            cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL, threads=ZSTD_THREADS)
            self._z = cctx.stream_writer(out, closefd=False)  # type: ignore[assignment]
        else:
            raise ValueError(f"unknown compression {compression!r}")

    def write(self, b: bytes) -> int:
        if self._z is None:
            return self._out.write(b)
        self._z.write(b)
        return len(b)

    def close(self) -> None:
        if self._z is not None:
            self._z.close()


class _TarSink(io.RawIOBase):
    """What tarfile writes to: hashes the tar bytes (diff_id) and feeds the compressor."""

    def __init__(self, comp: _Compressor) -> None:
        super().__init__()
        self._comp = comp
        self.hash = DigestingWriter(None)

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        """tarfile's plain "w" mode asks where it is; it never seeks."""
        return self.hash.size

    def write(self, b) -> int:  # type: ignore[no-untyped-def,override]
        self.hash.write(b)
        self._comp.write(b)
        return len(b)


# ------------------------------------------------------------------ write

def _sort_key(parts: tuple[bytes, ...]) -> tuple[bytes, ...]:
    # an opaque marker sorts before its siblings so it is applied before the dir's new children
    return tuple(b"" if c == OPAQUE_WHITEOUT.encode() else c for c in parts)


def _entries(changes: Iterable[Change]) -> list[tuple[tuple[bytes, ...], str]]:
    """(path parts, kind) for every tar entry, with parents of every change added, sorted."""
    want: dict[tuple[bytes, ...], str] = {}
    for ch in changes:
        parts = tuple(_split(ch.path))
        if not parts:
            continue
        if ch.kind == "delete":
            key = parts[:-1] + (WHITEOUT_PREFIX.encode() + parts[-1],)
            want[key] = "whiteout"
        elif ch.kind == "opaque":
            want[parts + (OPAQUE_WHITEOUT.encode(),)] = "whiteout"
            want[parts] = "add"
        else:
            want[parts] = "add"
        for i in range(1, len(parts)):
            want.setdefault(parts[:i], "parent")
    return sorted(want.items(), key=lambda kv: _sort_key(kv[0]))


def _clamp(mtime: int, sde: int | None) -> int:
    return min(mtime, sde) if sde is not None else mtime


def _tarinfo(root: Path, parts: tuple[bytes, ...], sde: int | None,
             links: dict[tuple[int, int], str]) -> tuple[tarfile.TarInfo | None, Path | None]:
    name = _rel(parts)
    full = Path(os.fsdecode(os.fsencode(root) + b"/" + b"/".join(parts)))
    st = os.lstat(full)
    ti = tarfile.TarInfo(name)
    ti.mode = stat.S_IMODE(st.st_mode)
    ti.uid, ti.gid = st.st_uid, st.st_gid
    ti.uname = ti.gname = ""
    ti.mtime = _clamp(int(st.st_mtime), sde)
    m = st.st_mode
    src: Path | None = None
    if stat.S_ISREG(m):
        key = (st.st_dev, st.st_ino)
        if st.st_nlink > 1 and key in links:
            ti.type = tarfile.LNKTYPE
            ti.linkname = links[key]
        else:
            if st.st_nlink > 1:
                links[key] = name
            ti.type = tarfile.REGTYPE
            ti.size = st.st_size
            src = full
    elif stat.S_ISDIR(m):
        ti.type = tarfile.DIRTYPE
    elif stat.S_ISLNK(m):
        ti.type = tarfile.SYMTYPE
        ti.linkname = os.fsdecode(os.readlink(os.fsencode(full)))
    elif stat.S_ISCHR(m) or stat.S_ISBLK(m):
        ti.type = tarfile.CHRTYPE if stat.S_ISCHR(m) else tarfile.BLKTYPE
        ti.devmajor, ti.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
    elif stat.S_ISFIFO(m):
        ti.type = tarfile.FIFOTYPE
    else:
        return None, None   # sockets (and unknown types) are left out, as Docker does
    _add_xattrs(ti, full)
    return ti, src


def _add_xattrs(ti: tarfile.TarInfo, full: Path) -> None:
    try:
        names = sorted(os.listxattr(full, follow_symlinks=False))
    except OSError:
        return
    for x in names:
        if x.startswith(_SKIP_XATTR_PREFIXES):
            continue
        v = _lgetxattr(os.fsencode(full), x)
        if v is not None:
            ti.pax_headers["SCHILY.xattr." + x] = v.decode("utf-8", "surrogateescape")


def write_layer(root: Path, changes: Iterable[Change], sink: BinaryIO, *,
                compression: Literal["gzip", "zstd", "uncompressed"],
                source_date_epoch: int | None = None) -> LayerStats:
    """Write a deterministic layer tar of `changes` (taken from `root`) to `sink`.

    Entries are sorted by path components (bytes), parents first (missing parents of a change are
    added from `root`); deletes become `.wh.<name>`, opaque dirs `<dir>/.wh..wh..opq`; hard links
    within the layer become link entries to the first path in order. PAX format; uname/gname
    empty; mtimes in whole seconds, clamped to `source_date_epoch` when given. Compression and
    both hashes happen in one pass; file contents are streamed. `sink` is not closed."""
    entries = _entries(changes)
    out = DigestingWriter(sink)
    comp = _Compressor(out, compression)
    tsink = _TarSink(comp)
    links: dict[tuple[int, int], str] = {}
    written = 0
    # Plain "w" mode over a sink that only counts: stream mode ("w|") re-concatenates its
    # buffer on every write, which made a 200 MB layer cost seconds.
    with tarfile.open(fileobj=tsink, mode="w", format=tarfile.PAX_FORMAT,  # type: ignore[call-overload]
                      encoding="utf-8", errors="surrogateescape", copybufsize=CHUNK) as tf:
        for parts, kind in entries:
            if kind == "whiteout":
                ti = tarfile.TarInfo(_rel(parts))
                ti.mode, ti.mtime, ti.uname, ti.gname = 0o644, _clamp(0, source_date_epoch), "", ""
                tf.addfile(ti)
                written += 1
                continue
            if kind == "parent" and not os.path.lexists(os.fsencode(root) + b"/" + b"/".join(parts)):
                continue
            ti, src = _tarinfo(root, parts, source_date_epoch, links)
            if ti is None:
                continue
            written += 1
            if src is None:
                tf.addfile(ti)
            else:
                with open(os.open(src, os.O_RDONLY | os.O_NOFOLLOW), "rb") as f:
                    tf.addfile(ti, f)
    comp.close()
    out.flush()
    return LayerStats(diff_id=tsink.hash.digest(), digest=out.digest(), size=out.size,
                      empty=written == 0)


# ------------------------------------------------------------------ read

class _Prefixed(io.RawIOBase):
    def __init__(self, head: bytes, rest: BinaryIO) -> None:
        super().__init__()
        self._head = head
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:  # type: ignore[no-untyped-def,override]
        if self._head:
            n = min(len(buf), len(self._head))
            buf[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._rest.read(len(buf))
        buf[: len(data)] = data
        return len(data)


def detect_compression(head: bytes) -> Literal["gzip", "zstd", "bzip2", "xz", "uncompressed"]:
    if head[:2] == b"\x1f\x8b":
        return "gzip"
    if head[:4] == b"\x28\xb5\x2f\xfd":
        return "zstd"
    if head[:3] == b"BZh":
        return "bzip2"
    if head[:6] == b"\xfd7zXZ\x00":
        return "xz"
    return "uncompressed"


def open_uncompressed(f: BinaryIO) -> BinaryIO:
    """A streaming reader of `f`'s uncompressed bytes (gzip, zstd, bzip2, xz or plain, told
    apart by magic bytes). Closing the result does not close `f`."""
    head = b""
    while len(head) < 6:
        b = f.read(6 - len(head))
        if not b:
            break
        head += b
    raw = io.BufferedReader(_Prefixed(head, f), CHUNK)
    kind = detect_compression(head)
    if kind == "gzip":
        try:
            from isal import igzip
            return igzip.IGzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
        except ImportError:
            return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    if kind == "zstd":
        import zstandard
        return zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True,  # type: ignore[return-value]
                                                          closefd=False)
    if kind == "bzip2":
        return bz2.BZ2File(raw, "rb")  # type: ignore[return-value]
    if kind == "xz":
        return lzma.LZMAFile(raw, "rb")  # type: ignore[return-value]
    return raw  # type: ignore[return-value]


# ------------------------------------------------------------------ apply

def apply_layer(tar_stream: BinaryIO, dest: Path, *, whiteouts: Literal["overlay", "delete", "none"],
                max_bytes: int = 1 << 40) -> None:
    """Apply an (uncompressed) layer tar read from `tar_stream` onto directory `dest`, streaming.

    Every name is made relative and resolved inside `dest` (symlinks in parent components are
    followed only inside dest; ".." refused). whiteouts="overlay": `.wh.x` → char device 0/0 `x`,
    `.wh..wh..opq` → xattr user.overlay.opaque=y on the dir. "delete": `.wh.x` removes x, an opaque
    marker empties the dir of what earlier layers put there. "none" (ADD of a local archive):
    `.wh.` names are ordinary files. A non-dir replaces what is at its path; a dir merges. Owners
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
        if self.whiteouts != "none" and base.startswith(WHITEOUT_PREFIX.encode()):
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
        try:
            os.lchown(path, m.uid, m.gid)
        except OSError as e:
            if e.errno in (errno.EINVAL, errno.EPERM):
                raise IdMappingError(f"cannot set owner {m.uid}:{m.gid} on {m.name!r}: "
                                     f"{ID_MAPPING_HINT}") from e
            raise
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
