"""BuildKit's file ops (COPY/ADD, mkdir, mkfile) applied to a writable root directory.

`apply_file_op(root, op, sources)` runs the op's actions in order on `root` (an overlay mount or
a plain directory). Sources are readable directories (`SourceDir`), indexed like `Copy.src`.

Semantics follow BuildKit's copy (fsutil) as shipped with Docker 20.10 plus current features:
- source paths resolve inside the source root (".." clamped, symlinks in parent components
  followed inside it); `*`, `?`, `[...]` match per component, `**` any number of directories;
  a literal path that is missing → SourceError; a wildcard without match → nothing copied when
  `allow_empty_wildcard`.
- a directory source copies its contents; a file goes to `dest/<basename>` when dest ends with
  "/" or is an existing directory, else dest is the file. Missing parents of dest are created
  0755, owned by the chown user (else 0:0). The destination is resolved inside root, following
  symlinks there (so COPY onto a symlink writes into its target).
- a top-level symlink source is followed (when `follow_symlinks`), symlinks inside a copied
  directory stay symlinks; hard links within one copied source stay hard links.
- owners: `chown` resolved against root's /etc/passwd and /etc/group (unknown names → 0,
  a user without group → the user's primary gid, numeric ids as is); without chown entries keep
  their owner, except from sources with `reset_owner` (host directories) which give 0:0.
- `chmod` (permission bits only: setuid/setgid/sticky are dropped) applies to every copied entry
  but not to an already-existing or parent-created destination directory. mtimes are kept.
- `unpack` (ADD): a local tar (plain, gzip, bzip2, xz, zstd; detected by content) is extracted
  into dest, keeping owners/modes/links; anything else is copied.
- `exclude` patterns match relative to each source, `SourceDir.excludes` (.dockerignore) relative
  to the source root; `parents` keeps the source's directories below an optional "/./" pivot.
"""
from __future__ import annotations

import errno
import os
import posixpath
import stat
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from builder.solve import ops
from builder.errors import SourceError
from builder.layer.compression import detect_compression, open_uncompressed
from builder.layer.apply import apply_layer
from builder.layer.tar import _SKIP_XATTR_PREFIXES, CHUNK, lchown_mapped, remove_path, resolve_in_root
from builder.layer.pathmatch import PathMatcher, glob_match

__all__ = ["SourceDir", "SourceMatch", "apply_file_op", "resolve_sources", "resolve_chown",
           "has_wildcards"]

_MAGIC = set("*?[")


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceDir:
    """A readable source tree. `excludes`: .dockerignore patterns relative to `path`.
    `reset_owner`: True for host directories (build context, named contexts): entries copied
    from it become 0:0 unless the copy has a chown."""
    path: Path
    excludes: tuple[str, ...] = ()
    reset_owner: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceMatch:
    """One resolved source: `rel` is its path inside the source root (parents resolved, final
    component as written), `host` the host path to read (final symlink followed when asked),
    `rel_base` the path below the "/./" pivot (for --parents), `base` the pivot dir."""
    rel: str
    host: Path
    rel_base: str
    base: str


def has_wildcards(p: str) -> bool:
    return any(c in _MAGIC for c in p)


def _split_pivot(pattern: str) -> tuple[list[str], list[str]]:
    comps = pattern.split("/")
    while comps and comps[0] in ("", "."):
        comps = comps[1:]
    if "." in comps[:-1]:
        i = comps.index(".")
        base, rest = comps[:i], comps[i + 1:]
    else:
        base, rest = [], comps
    clean = lambda cs: [c for c in posixpath.normpath("/" + "/".join(cs)).split("/") if c]  # noqa: E731
    return clean(base), [c for c in rest if c not in ("", ".")]


def resolve_sources(src_root: Path, pattern: str, *, follow_symlinks: bool = True,
                    allow_wildcard: bool = True, ignore: PathMatcher | None = None) -> list[SourceMatch]:
    """Expand one COPY source pattern inside `src_root`, sorted. Entries excluded by `ignore`
    (relative to src_root) do not exist. A literal path yields one match if it exists, else none."""
    base, rest = _split_pivot(pattern)
    if ".." in rest:
        merged = [c for c in posixpath.normpath("/" + "/".join(base + rest)).split("/") if c]
        base, rest = [], merged
    base_host = resolve_in_root(src_root, "/".join(base))
    base_rel = _relto(src_root, base_host)
    states: list[tuple[str, str]] = [(base_rel, "")]   # (resolved rel to root, rel to base)
    for i, comp in enumerate(rest):
        last = i == len(rest) - 1
        nxt: list[tuple[str, str]] = []
        for rel, relb in states:
            if comp == "**" and allow_wildcard:
                nxt.extend(_all_dirs(src_root, rel, relb, ignore))
                continue
            if allow_wildcard and has_wildcards(comp):
                try:
                    names = sorted(os.listdir(resolve_in_root(src_root, rel)))
                except (FileNotFoundError, NotADirectoryError):
                    continue
                cands = [n for n in names if glob_match(n, comp)]
            else:
                cands = [comp]
            for n in cands:
                nrel, nrelb = _join(rel, n), _join(relb, n)
                if not last:
                    host = resolve_in_root(src_root, nrel)
                    if not host.is_dir():
                        continue
                    nrel = _relto(src_root, host)
                nxt.append((nrel, nrelb))
        states = nxt
    out: list[SourceMatch] = []
    seen: set[str] = set()
    for rel, relb in states:
        host = resolve_in_root(src_root, rel, follow_final=follow_symlinks)
        if not os.path.lexists(host) or rel in seen:
            continue
        if ignore and ignore.matches(rel) and not (host.is_dir() and ignore.may_match_below(rel)):
            continue
        seen.add(rel)
        out.append(SourceMatch(rel=rel, host=host, rel_base=relb, base=base_rel))
    return out


def _all_dirs(root: Path, rel: str, relb: str, ignore: PathMatcher | None) -> list[tuple[str, str]]:
    out = [(rel, relb)]
    host = resolve_in_root(root, rel)
    try:
        names = sorted(os.listdir(host))
    except (FileNotFoundError, NotADirectoryError):
        return []
    for n in names:
        r = _join(rel, n)
        if os.path.isdir(host / n) and not os.path.islink(host / n):
            if ignore and ignore.can_skip_dir(r):
                continue
            out.extend(_all_dirs(root, r, _join(relb, n), ignore))
    return out


def _join(a: str, b: str) -> str:
    return f"{a}/{b}" if a else b


def _relto(root: Path, host: Path) -> str:
    r = os.path.relpath(host, root)
    return "" if r == "." else r


# ------------------------------------------------------------------ ownership

def _lookup(path: Path, name: str) -> tuple[int, int] | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                fields = line.rstrip("\n").split(":")
                if len(fields) >= 3 and fields[0] == name:
                    gid = int(fields[3]) if len(fields) > 3 and fields[3].isdigit() else 0
                    return int(fields[2]), gid
    except (OSError, ValueError):
        return None
    return None


def resolve_chown(root: Path, chown: ops.Chown | None) -> tuple[int, int] | None:
    """(uid, gid) for a chown spec against root's /etc/passwd and /etc/group; None without one."""
    if chown is None:
        return None
    uid = gid = 0
    if chown.user.isdigit():
        uid = gid = int(chown.user)
    elif chown.user:
        hit = _lookup(resolve_in_root(root, "etc/passwd"), chown.user)
        if hit:
            uid, gid = hit
    if chown.group.isdigit():
        gid = int(chown.group)
    elif chown.group:
        g = _lookup(resolve_in_root(root, "etc/group"), chown.group)
        if g:
            gid = g[0]
    return uid, gid


def _lchown(path: Path | bytes, uid: int, gid: int) -> None:
    lchown_mapped(path, uid, gid)


def _mkdir_all(root: Path, path: Path, mode: int, owner: tuple[int, int]) -> None:
    """Create the missing directories of `path` (already resolved inside root)."""
    rel = _relto(root, path)
    if not rel:
        return
    cur = root
    for comp in rel.split("/"):
        cur = cur / comp
        try:
            st = os.lstat(cur)
        except FileNotFoundError:
            os.mkdir(cur, 0o700)
            _lchown(cur, *owner)
            os.chmod(cur, mode)
            continue
        if stat.S_ISLNK(st.st_mode):
            cur = resolve_in_root(root, _relto(root, cur))
            if not cur.is_dir():
                raise SourceError(f"{_relto(root, cur)}: not a directory")
        elif not stat.S_ISDIR(st.st_mode):
            raise SourceError(f"/{_relto(root, cur)}: not a directory")


# ------------------------------------------------------------------ copying

@dataclass(kw_only=True)
class _Copier:
    root: Path
    owner: tuple[int, int] | None
    reset_owner: bool
    chmod: int | None
    exclude: PathMatcher
    ignore: PathMatcher
    inodes: dict[tuple[int, int], Path] = field(default_factory=dict)

    def ids(self, st: os.stat_result) -> tuple[int, int]:
        if self.owner is not None:
            return self.owner
        return (0, 0) if self.reset_owner else (st.st_uid, st.st_gid)

    def meta(self, dst: Path, st: os.stat_result, src: Path) -> None:
        _lchown(dst, *self.ids(st))
        _copy_xattrs(src, dst)
        if not stat.S_ISLNK(st.st_mode):
            os.chmod(dst, self.chmod if self.chmod is not None else stat.S_IMODE(st.st_mode))
        os.utime(dst, ns=(st.st_mtime_ns, st.st_mtime_ns), follow_symlinks=False)

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
            rc, rr = _join(rel_copy, n), _join(rel_root, n)
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
                        raise SourceError(f"cannot copy a directory to non-directory /{_relto(self.root, dst)}")
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


def _copy_xattrs(src: Path, dst: Path) -> None:
    try:
        names = os.listxattr(src, follow_symlinks=False)
    except OSError:
        return
    for x in names:
        if x.startswith(_SKIP_XATTR_PREFIXES):
            continue
        try:
            os.setxattr(dst, x, os.getxattr(src, x, follow_symlinks=False), follow_symlinks=False)
        except OSError:
            pass


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


def _copy_action(root: Path, a: ops.Copy, src: SourceDir) -> None:
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
                 chmod=None if a.chmod is None else a.chmod & 0o777,
                 exclude=PathMatcher(a.exclude), ignore=ignore)
    for m in matches:
        cp.inodes.clear()
        _copy_one(root, cp, a, m, src)


def _copy_one(root: Path, cp: _Copier, a: ops.Copy, m: SourceMatch, src: SourceDir) -> None:
    try:
        st = os.lstat(m.host)
    except FileNotFoundError:
        raise SourceError(f"{m.rel}: not found") from None
    dirs_owner = cp.owner or (0, 0)
    dest_slash = a.dest.endswith("/")
    dst = resolve_in_root(root, a.dest)
    if not a.create_dest_path and not (dst if dest_slash else dst.parent).is_dir():
        raise SourceError(f"{a.dest}: destination directory does not exist")
    noop: Callable[[], None] = lambda: None  # noqa: E731
    if a.parents:
        _mkdir_all(root, dst, 0o755, dirs_owner)
        target = _parents_dirs(root, cp, src, m, dst)
    elif stat.S_ISDIR(st.st_mode):
        # A directory's contents are copied; a destination it creates is a new 0755 directory
        # owned by --chown or root, never a copy of the source directory's own metadata.
        new_dest = dest_slash or not os.path.lexists(dst)
        _mkdir_all(root, dst if new_dest else dst.parent, 0o755, dirs_owner)
        cp.copy_dir(m.host, st, dst, "", m.rel, noop, top=True)
        return
    elif a.unpack and stat.S_ISREG(st.st_mode) and _is_archive(m.host):
        _mkdir_all(root, dst, 0o755, dirs_owner)
        with open(m.host, "rb") as f, open_uncompressed(f) as u:
            apply_layer(u, dst, whiteouts="archive")
        return
    elif dest_slash or dst.is_dir():
        _mkdir_all(root, dst, 0o755, dirs_owner)
        target = dst / posixpath.basename(m.rel)
    else:
        _mkdir_all(root, dst.parent, 0o755, dirs_owner)
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
        cur = resolve_in_root(root, _relto(root, cur) + "/" + comp)
        if not os.path.lexists(cur):
            s = resolve_in_root(src.path, _join(m.base, "/".join(parts[: i + 1])))
            _mkdir_all(root, cur.parent, 0o755, (0, 0))     # a dangling link's target, inside root
            os.mkdir(cur, 0o700)
            cp.meta(cur, os.lstat(s), s)
        elif not os.path.isdir(cur):
            raise SourceError(f"/{_relto(root, cur)}: not a directory")
    return resolve_in_root(root, _relto(root, cur) + "/" + parts[-1], follow_final=False) if parts else dst


# ------------------------------------------------------------------ mkdir / mkfile

def _mkdir_action(root: Path, a: ops.Mkdir) -> None:
    owner = resolve_chown(root, a.chown) or (0, 0)
    target = resolve_in_root(root, a.path)
    if target == root or os.path.isdir(target):
        return
    if a.make_parents:
        _mkdir_all(root, target.parent, a.mode & 0o7777, owner)
    elif not target.parent.is_dir():
        raise SourceError(f"{a.path}: parent directory does not exist")
    if os.path.lexists(target):
        raise SourceError(f"{a.path}: exists and is not a directory")
    os.mkdir(target, 0o700)
    _lchown(target, *owner)
    os.chmod(target, a.mode & 0o7777)


def _mkfile_action(root: Path, a: ops.Mkfile) -> None:
    owner = resolve_chown(root, a.chown) or (0, 0)
    target = resolve_in_root(root, a.path)
    _mkdir_all(root, target.parent, 0o755, owner)
    if os.path.isdir(target) and not os.path.islink(target):
        raise SourceError(f"{a.path}: is a directory")
    remove_path(target)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with open(fd, "wb") as f:
        f.write(a.data)
    _lchown(target, *owner)
    os.chmod(target, a.mode & 0o7777)


def apply_file_op(root: Path, op: ops.FileOp, sources: Mapping[int, SourceDir]) -> None:
    """Apply `op.actions` in order to the writable directory `root`. `sources[i]` is the tree of
    the op's input i (Copy.src). Raises SourceError for missing sources or impossible targets,
    IdMappingError when an owner cannot be set in this user namespace."""
    root = Path(root)
    for action in op.actions:
        if isinstance(action, ops.Copy):
            if action.src not in sources:
                raise SourceError(f"copy source input {action.src} is not available")
            _copy_action(root, action, sources[action.src])
        elif isinstance(action, ops.Mkdir):
            _mkdir_action(root, action)
        elif isinstance(action, ops.Mkfile):
            _mkfile_action(root, action)
        else:
            raise TypeError(f"unknown file action {type(action).__name__}")
