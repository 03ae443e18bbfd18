"""Layer vocabulary and deterministic layer tars.

- `Change(kind, path)`: one entry of a snapshot diff (builder.layer.diff makes them).
- `write_layer(root, changes, sink, compression=...)` writes a deterministic tar of those changes,
  compressing and hashing in one streaming pass (diff_id of the tar, digest/size of what reaches
  the sink); codecs are pinned in builder.layer.compression.
- `resolve_in_root` / `remove_path`: path handling that never leaves a root (also used by
  builder.layer.apply, builder.layer.sources and the sandbox's copy code).

Paths in `Change` are relative to the root, "/"-separated, without a leading "/", and keep the
exact bytes of names through `os.fsdecode` (surrogateescape).
"""
from __future__ import annotations

import errno
import io
import os
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterable, Literal

from builder.image.oci import Compression
from builder.layer import inroot
from builder.layer.compression import CHUNK, Compressor
from builder.layer.merged import OPAQUE_XATTRS, SKIP_XATTR_PREFIXES
from builder.layer.rmtree import remove_tree
from builder.image.digest import Digest, DigestingWriter
from builder.errors import IdMappingError, LayerError

__all__ = ["Change", "LayerStats", "write_layer", "resolve_in_root", "remove_path",
           "WHITEOUT_PREFIX", "OPAQUE_WHITEOUT", "ID_MAPPING_HINT"]

WHITEOUT_PREFIX = ".wh."
OPAQUE_WHITEOUT = ".wh..wh..opq"
_OPAQUE_XATTRS = OPAQUE_XATTRS                 # overlay's opaque markers (builder.layer.merged)
_SKIP_XATTR_PREFIXES = SKIP_XATTR_PREFIXES     # xattrs never copied into or out of a layer
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
    Raises LayerError on symlink loops (> 40 hops). (`builder.layer.inroot.resolve` does it.)"""
    try:
        return Path(inroot.resolve(root, rel, follow_final=follow_final, missing="keep"))
    except OSError as e:
        if e.errno != errno.ELOOP:
            raise
        raise LayerError(f"too many levels of symbolic links resolving {os.fsdecode(rel)!r}") from None


def lchown_mapped(path: Path | bytes, uid: int, gid: int, *, what: str = "") -> None:
    """os.lchown that explains the one failure users can fix: an owner the user namespace cannot
    map (no /etc/subuid range) raises IdMappingError with the command that adds a range."""
    try:
        os.lchown(path, uid, gid)
    except OSError as e:
        if e.errno in (errno.EINVAL, errno.EPERM):
            raise IdMappingError(f"cannot set owner {uid}:{gid} on {what or os.fsdecode(path)!r}: "
                                 f"{ID_MAPPING_HINT}") from e
        raise


def remove_path(p: Path) -> None:
    """Remove whatever is at `p` (never following a symlink, without recursion whatever the
    depth); no error if nothing is there."""
    remove_tree(p)


def _lgetxattr(p: bytes | str, name: str) -> bytes | None:
    try:
        return os.getxattr(p, name, follow_symlinks=False)
    except OSError:
        return None


class _TarSink(io.RawIOBase):
    """What tarfile writes to: hashes the tar bytes (diff_id) and feeds the compressor."""

    def __init__(self, comp: Compressor) -> None:
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
            ti.pax_headers["SCHILY.xattr." + x] = v.decode("utf-8", "surrogateescape")  # type: ignore[index]


def write_layer(root: Path, changes: Iterable[Change], sink: BinaryIO, *,
                compression: Compression,
                source_date_epoch: int | None = None) -> LayerStats:
    """Write a deterministic layer tar of `changes` (taken from `root`) to `sink`.

    Entries are sorted by path components (bytes), parents first (missing parents of a change are
    added from `root`); deletes become `.wh.<name>`, opaque dirs `<dir>/.wh..wh..opq`; hard links
    within the layer become link entries to the first path in order. PAX format; uname/gname
    empty; mtimes in whole seconds, clamped to `source_date_epoch` when given. Compression and
    both hashes happen in one pass; file contents are streamed. `sink` is not closed."""
    entries = _entries(changes)
    out = DigestingWriter(sink)
    comp = Compressor(out, compression)
    tsink = _TarSink(comp)
    links: dict[tuple[int, int], str] = {}
    written = 0
    # Plain "w" mode over a sink that only counts: stream mode ("w|") re-concatenates its
    # buffer on every write, which made a 200 MB layer cost seconds.
    with tarfile.open(fileobj=tsink, mode="w", format=tarfile.PAX_FORMAT,  # type: ignore[call-overload]
                      encoding="utf-8", errors="surrogateescape", copybufsize=CHUNK) as tf:
        for parts, kind in entries:
            if kind == "whiteout":
                wt = tarfile.TarInfo(_rel(parts))
                wt.mode, wt.mtime, wt.uname, wt.gname = 0o644, _clamp(0, source_date_epoch), "", ""
                tf.addfile(wt)
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


