"""Snapshots of root filesystems, keyed by the OCI ChainID of their layer chain.

Everything here runs INSIDE the sandbox worker's user namespace (snapshot files belong to mapped
ids). Two snapshotters share one small interface:

- `OverlaySnapshotter`: `<root>/so/<first 12 hex of ChainID>/fs` holds one layer's diff in
  overlay format (whiteouts = char 0/0, opaque dirs = user.overlay.opaque). A step's rootfs is an
  overlay of the chain's `fs` dirs (top first) with a fresh upper; its diff is the upper dir.
  Chains deeper than `MAX_LOWERS` (or whose option string would not fit in a page) are
  flattened: `<root>/so/f<hex>/fs` is a merged copy of a prefix, used as the bottom lower.
- `NativeSnapshotter`: `<root>/sn/<hex>/fs` is the full tree; a step works on a copy of it
  (owners, modes, xattrs, hardlinks and mtimes preserved) and its diff is a tree comparison.

Layers come from registries and are hostile input: each is applied by `builder.layer.apply`
(every name resolved inside the root; an overlay layer's parents resolved in the merged tree of
the layers below it, so both snapshotters give the tree a full extraction gives), verified against
its digest and diff_id while it is read (to the end), and capped against decompression bombs by
the snapshotter's `ExpandLimit`. A layer that fails leaves nothing: its temp dir is removed.

Snapshots are built in a temp dir beside their final place and renamed into it under a
per-snapshot flock, so concurrent builds wanting the same chain never corrupt each other; an
existing snapshot is never replaced. Missing snapshots are created from the layer blobs in the
content store.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import stat
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Literal, Sequence

from builder.errors import SandboxError
from builder.image.view import Chain, chain_id
from builder.layer.compression import CHUNK, open_uncompressed
from builder.layer.merged import copy_xattrs
from builder.layer.limits import CappedReader, ExpandLimit
from builder.layer.apply import apply_layer
from builder.layer.diff import overlay_changes, tree_changes
from builder.layer.tar import Change, remove_path
from builder.layer.rmtree import remove_tree
from builder.store.content import ContentStore, VerifyingReader, file_lock, pid_alive

MAX_LOWERS = 35
FLATTEN_EVERY = 32
MAX_OPTS = 4000                 # mount(2) option data is one page (4096)


@dataclass(frozen=True, slots=True, kw_only=True)
class RootSpec:
    """How to mount a root filesystem: an overlay (lower top-first, optional upper/work) or a
    plain directory bound in place."""
    type: Literal["overlay", "bind"]
    lower: tuple[str, ...] = ()
    upper: str = ""
    work: str = ""
    path: str = ""

    def to_json(self) -> dict:
        if self.type == "bind":
            return {"type": "bind", "path": self.path}
        return {"type": "overlay", "lower": list(self.lower), "upper": self.upper, "work": self.work}


@dataclass(slots=True, kw_only=True)
class Active:
    """A writable snapshot being prepared over `base` (mutable: owned by one step)."""
    base: Chain
    tmp: Path              # temp snapshot dir; holds fs/ (and work/ for overlay)
    rootfs: RootSpec
    diff_lower: Path | None = None     # native: the parent tree to compare against
    copied_ns: int | None = None       # native: when the copy of the parent was complete
    extra: list[Path] = field(default_factory=list)

    @property
    def fs(self) -> Path:
        return self.tmp / "fs"


def _key(chain: Chain) -> str:
    return chain_id([l.diff_id for l in chain]).hex[:12]


def copy_tree(src: Path, dst: Path, *, owners: bool = True, exist_ok: bool = False) -> None:
    """Copy directory `src` to new directory `dst` preserving types, modes, mtimes, xattrs,
    hard links and (when `owners`) owners. Device nodes are recreated when permitted and skipped
    otherwise (as containerd does in user namespaces). With `exist_ok`, `dst` may exist already:
    the trees are merged, an existing directory is reused and any other existing entry is
    replaced (never followed: a symlink in `dst` is replaced, not written through); `dst`'s own
    metadata becomes src's. This is what a local export into a used folder needs."""
    links: dict[tuple[int, int], bytes] = {}
    dirs: list[tuple[bytes, os.stat_result]] = []
    s, d = os.fsencode(src), os.fsencode(dst)
    st = os.lstat(s)
    if not (exist_ok and os.path.isdir(d)):
        os.mkdir(d, 0o700)
    _copy_meta(s, d, st, owners)
    dirs.append((d, st))
    _copy_dir(s, d, owners, links, dirs, exist_ok)
    for path, st in reversed(dirs):
        os.chmod(path, stat.S_IMODE(st.st_mode))
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def _copy_dir(s: bytes, d: bytes, owners: bool, links: dict, dirs: list, merge: bool) -> None:
    with os.scandir(s) as it:
        entries = sorted(it, key=lambda e: e.name)
    for e in entries:
        sp, dp = s + b"/" + e.name, d + b"/" + e.name
        st = os.lstat(sp)
        mode = st.st_mode
        reuse_dir = False
        if merge:
            try:
                reuse_dir = stat.S_ISDIR(mode) and stat.S_ISDIR(os.lstat(dp).st_mode)
                if not reuse_dir:
                    remove_path(Path(os.fsdecode(dp)))
            except FileNotFoundError:
                pass
        if stat.S_ISDIR(mode):
            if not reuse_dir:
                os.mkdir(dp, 0o700)
            _copy_meta(sp, dp, st, owners)
            dirs.append((dp, st))
            _copy_dir(sp, dp, owners, links, dirs, merge)
            continue
        if st.st_nlink > 1 and not stat.S_ISDIR(mode):
            first = links.get((st.st_dev, st.st_ino))
            if first is not None:
                os.link(first, dp)
                continue
            links[(st.st_dev, st.st_ino)] = dp
        if stat.S_ISREG(mode):
            _copy_file(sp, dp)
        elif stat.S_ISLNK(mode):
            os.symlink(os.readlink(sp), dp)
        elif stat.S_ISFIFO(mode):
            os.mkfifo(dp, 0o600)
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            try:
                os.mknod(dp, mode, st.st_rdev)
            except PermissionError:
                continue
        elif stat.S_ISSOCK(mode):
            continue
        _copy_meta(sp, dp, st, owners)
        if not stat.S_ISLNK(mode):
            os.chmod(dp, stat.S_IMODE(mode))
        os.utime(dp, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def _copy_file(sp: bytes, dp: bytes) -> None:
    with open(sp, "rb") as fi, open(dp, "xb") as fo:
        n = os.fstat(fi.fileno()).st_size
        try:
            while n > 0:
                k = os.copy_file_range(fi.fileno(), fo.fileno(), min(n, 1 << 30))
                if k == 0:
                    break
                n -= k
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            shutil.copyfileobj(fi, fo, 1 << 20)


def _copy_meta(sp: bytes, dp: bytes, st: os.stat_result, owners: bool) -> None:
    if owners:
        os.lchown(dp, st.st_uid, st.st_gid)
    copy_xattrs(sp, dp, skip=())          # every xattr: a snapshot copy is exact


# ------------------------------------------------------------------ snapshotters

class _Base:
    name = ""

    def __init__(self, root: Path, store: ContentStore, *, limit: ExpandLimit = ExpandLimit()) -> None:
        self.root = root
        self.store = store
        self.limit = limit
        self.dir.mkdir(parents=True, exist_ok=True)

    @property
    def dir(self) -> Path:
        raise NotImplementedError

    def _path(self, chain: Chain, prefix: str = "") -> Path:
        return self.dir / (prefix + _key(chain) if chain else "empty")

    def new_tmp(self) -> Path:
        return Path(tempfile.mkdtemp(dir=self.dir, prefix=f".t{os.getpid()}-"))

    def _build(self, dest: Path, make: Callable[[Path], None]) -> None:
        """Create snapshot dir `dest` atomically with `make(tmp)` unless it exists."""
        if dest.is_dir():
            return
        with file_lock(dest.with_name(dest.name + ".lock")):
            if dest.is_dir():
                return
            tmp = self.new_tmp()
            try:
                make(tmp)
                os.rename(tmp, dest)
            except BaseException:
                remove_tree(tmp)
                raise

    def _apply_blob(self, chain: Chain, i: int, dest: Path, whiteouts: Literal["overlay", "delete"],
                    lowers: Sequence[Path] = ()) -> None:
        """Apply layer `i` of `chain` from the store onto `dest`. The blob is verified against its
        digest and size and the tar against its diff_id (all of both are read, also what follows
        the tar's end marker), and capped against decompression bombs (`self.limit`)."""
        desc = chain[i].descriptor
        what = f"layer {desc.digest}"
        budget = self.limit.budget(desc.size)
        with self.store.open_verified(desc.digest, desc.size) as f, open_uncompressed(f) as u:
            checked = CappedReader(VerifyingReader(u, chain[i].diff_id, what="layer diff_id"),  # type: ignore[arg-type]
                                   budget, what=what)
            apply_layer(checked, dest, whiteouts=whiteouts, max_bytes=budget, what=what,  # type: ignore[arg-type]
                        lowers=lowers)
            while checked.read(CHUNK):       # tar padding after the end marker, then the check
                pass
            while f.read(CHUNK):             # what the decompressor left unread: the digest check
                pass

    def commit(self, active: Active, new_chain: Chain) -> None:
        """Install `active` as the snapshot of `new_chain` (or drop it if one exists)."""
        dest = self._path(new_chain)
        with file_lock(dest.with_name(dest.name + ".lock")):
            if dest.is_dir():
                remove_tree(active.tmp)
            else:
                os.rename(active.tmp, dest)

    def abort(self, active: Active) -> None:
        remove_tree(active.tmp)


class OverlaySnapshotter(_Base):
    name = "overlay"

    @property
    def dir(self) -> Path:
        return self.root / "so"

    def _empty(self) -> Path:
        p = self.dir / "empty" / "fs"
        if not p.is_dir():
            p.mkdir(parents=True, exist_ok=True)
        return p

    def ensure(self, chain: Chain) -> None:
        for i in range(len(chain)):
            def make(tmp: Path, i: int = i) -> None:
                (tmp / "fs").mkdir()
                lowers = [self._path(chain[:j]) / "fs" for j in range(i, 0, -1)]   # top first
                self._apply_blob(chain, i, tmp / "fs", "overlay", lowers)
            self._build(self._path(chain[: i + 1]), make)

    def _flat(self, chain: Chain) -> Path:
        def make(tmp: Path) -> None:
            (tmp / "fs").mkdir()
            for i in range(len(chain)):
                self._apply_blob(chain, i, tmp / "fs", "delete")
        dest = self._path(chain, "f")
        self._build(dest, make)
        return dest / "fs"

    def lowers(self, chain: Chain) -> list[str]:
        """The chain's lower dirs, top first (flattening deep chains); never empty."""
        self.ensure(chain)
        n = len(chain)
        k = (n // FLATTEN_EVERY) * FLATTEN_EVERY if n > MAX_LOWERS else 0
        out = [str(self._path(chain[: i]) / "fs") for i in range(n, k, -1)]
        if k:
            out.append(str(self._flat(chain[:k])))
        budget = MAX_OPTS - 2 * (len(str(self.dir)) + 48)     # upperdir + workdir share the page
        if len(":".join(out)) > budget and n:
            out = [str(self._flat(chain))]
        return out or [str(self._empty())]

    def view(self, chain: Chain) -> RootSpec:
        """A read-only merged view (overlay needs two lowers without an upper)."""
        lower = self.lowers(chain)
        if len(lower) == 1:
            lower.append(str(self._empty()))
        return RootSpec(type="overlay", lower=tuple(lower))

    def prepare(self, chain: Chain) -> Active:
        lower = self.lowers(chain)
        tmp = self.new_tmp()
        (tmp / "fs").mkdir()
        (tmp / "work").mkdir()
        spec = RootSpec(type="overlay", lower=tuple(lower), upper=str(tmp / "fs"), work=str(tmp / "work"))
        return Active(base=chain, tmp=tmp, rootfs=spec)

    def changes(self, active: Active) -> Iterator[Change]:
        return overlay_changes(active.fs)

    def commit(self, active: Active, new_chain: Chain) -> None:
        remove_tree(active.tmp / "work")
        super().commit(active, new_chain)


class NativeSnapshotter(_Base):
    name = "native"

    @property
    def dir(self) -> Path:
        return self.root / "sn"

    def ensure(self, chain: Chain) -> Path:
        """The full tree of `chain`, creating missing prefixes from the store."""
        empty = self.dir / "empty" / "fs"
        if not empty.is_dir():
            empty.mkdir(parents=True, exist_ok=True)
        prev = empty
        for i in range(len(chain)):
            def make(tmp: Path, i: int = i, prev: Path = prev) -> None:
                copy_tree(prev, tmp / "fs")
                self._apply_blob(chain, i, tmp / "fs", "delete")
            dest = self._path(chain[: i + 1])
            self._build(dest, make)
            prev = dest / "fs"
        return prev

    def view(self, chain: Chain) -> RootSpec:
        return RootSpec(type="bind", path=str(self.ensure(chain)))

    def prepare(self, chain: Chain) -> Active:
        base = self.ensure(chain)
        tmp = self.new_tmp()
        copy_tree(base, tmp / "fs")
        return Active(base=chain, tmp=tmp, rootfs=RootSpec(type="bind", path=str(tmp / "fs")), diff_lower=base,
                      copied_ns=time.time_ns())

    def changes(self, active: Active) -> Iterator[Change]:
        assert active.diff_lower is not None
        return tree_changes(active.diff_lower, active.fs, since_ns=active.copied_ns)


Snapshotter = OverlaySnapshotter | NativeSnapshotter

_TMP_NAME = re.compile(r"^(?:\.t)?(\d+)-")


def clean_stale(*dirs: Path) -> None:
    """Remove temp dirs (`.t<pid>-*`, `<pid>-*`) left in `dirs` by processes that are gone."""
    for d in dirs:
        if not d.is_dir():
            continue
        for p in d.iterdir():
            m = _TMP_NAME.match(p.name)
            if m is None or not p.is_dir():
                continue
            if pid_alive(int(m.group(1))):
                continue
            with contextlib.suppress(OSError):
                remove_tree(p)


def make_snapshotter(kind: str, root: Path, store: ContentStore, *,
                     limit: ExpandLimit = ExpandLimit()) -> Snapshotter:
    """The snapshotter `kind` ("overlay" or "native"); `limit` caps how far each layer applied
    from the store may expand."""
    if kind == "overlay":
        return OverlaySnapshotter(root, store, limit=limit)
    if kind == "native":
        return NativeSnapshotter(root, store, limit=limit)
    raise SandboxError(f"unknown snapshotter {kind!r}")
