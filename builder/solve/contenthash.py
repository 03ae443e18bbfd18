"""Cache checksums of the context files a COPY selects.

`checksum_sources(root, src_paths, ...)` digests, for every selected entry, its path (relative to
the matched source), file type, permission bits (incl. setuid/setgid/sticky), symlink target and,
for regular files, the sha256 of the content. Not mtimes, not owners: COPY sets owners itself and
CI runners with other uids must share keys. Wildcards and .dockerignore excludes are resolved as
`builder.sandbox.fileop` resolves them, so the digest covers exactly what the copy would read.

`ChecksumMemo(path)` remembers file sha256s keyed by (dev, ino, size, mtime_ns, ctime_ns) in a
small JSON file, merged and written atomically under a cross-process lock, so unchanged big files
are not re-read. The digest itself depends only on content.
"""
from __future__ import annotations

import hashlib
import json
import os
import stat
import time
from pathlib import Path
from typing import Sequence

from builder.image.digest import Digest
from builder.errors import SourceError
from builder.layer.sources import has_wildcards, resolve_sources
from builder.layer.tar import CHUNK
from builder.layer.pathmatch import PathMatcher
from builder.store.content import atomic_write, file_lock

__all__ = ["ChecksumMemo", "checksum_sources", "CONTENTHASH_VERSION"]

CONTENTHASH_VERSION = 1
_MEMO_MAX = 200_000


class ChecksumMemo:
    """Persistent file-hash memo. Not thread-safe within one process; safe across processes
    (`save` merges with what others wrote, under a flock, then replaces the file atomically)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._data: dict[str, str] | None = None
        self._new: dict[str, str] = {}

    @staticmethod
    def _key(st: os.stat_result) -> str:
        return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"

    def _load(self) -> dict[str, str]:
        try:
            raw = json.loads(self.path.read_bytes())
            if isinstance(raw, dict) and raw.get("v") == CONTENTHASH_VERSION:
                return {k: v for k, v in raw.get("files", {}).items() if isinstance(v, str)}
        except (OSError, ValueError):
            pass
        return {}

    def get(self, st: os.stat_result) -> str | None:
        if self._data is None:
            self._data = self._load()
        k = self._key(st)
        return self._new.get(k) or self._data.get(k)

    def put(self, st: os.stat_result, sha256_hex: str) -> None:
        self._new[self._key(st)] = sha256_hex

    def save(self) -> None:
        """Merge new entries into the file (no-op when nothing is new)."""
        if not self._new:
            return
        with file_lock(self.path.with_name(self.path.name + ".lock")):
            merged = self._load()
            merged.update(self._new)
            if len(merged) > _MEMO_MAX:
                merged = dict(list(merged.items())[-_MEMO_MAX:])
            atomic_write(self.path, json.dumps({"v": CONTENTHASH_VERSION, "files": merged},
                                               sort_keys=True, separators=(",", ":")).encode())
            self._data = merged
            self._new = {}


RACY_NS = 2_000_000_000


def _file_sha256(path: Path, st: os.stat_result, memo: ChecksumMemo | None) -> str:
    if memo is not None:
        hit = memo.get(st)
        if hit is not None:
            return hit
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with open(fd, "rb") as f:
        while b := f.read(CHUNK):
            h.update(b)
    hx = h.hexdigest()
    if memo is not None:
        after = os.lstat(path)
        # Unchanged while we read, and not "racily clean" (as git calls it): file times come from
        # a coarse clock, so a file changed again within the same tick keeps its stat data. Only
        # entries whose ctime is safely in the past are remembered.
        racy = after.st_ctime_ns >= time.time_ns() - RACY_NS
        if ChecksumMemo._key(after) == ChecksumMemo._key(st) and not racy:
            memo.put(st, hx)
    return hx


def _record(h: "hashlib._Hash", rel: str, host: Path, st: os.stat_result, memo: ChecksumMemo | None) -> None:
    m = st.st_mode
    if stat.S_ISREG(m):
        kind, extra = "file", _file_sha256(host, st, memo)
    elif stat.S_ISDIR(m):
        kind, extra = "dir", ""
    elif stat.S_ISLNK(m):
        kind, extra = "symlink", os.fsdecode(os.readlink(host))
    elif stat.S_ISCHR(m) or stat.S_ISBLK(m):
        kind, extra = "dev", f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
    elif stat.S_ISFIFO(m):
        kind, extra = "fifo", ""
    else:
        return
    line = json.dumps([rel, kind, stat.S_IMODE(m), extra], separators=(",", ":"),
                      ensure_ascii=True) + "\n"
    h.update(line.encode("utf-8", "surrogateescape"))


def _walk(h: "hashlib._Hash", host: Path, rel: str, rel_root: str, ignore: PathMatcher,
          excl: PathMatcher, memo: ChecksumMemo | None) -> None:
    for name in sorted(os.listdir(os.fsencode(host))):
        n = os.fsdecode(name)
        p = host / n
        r = f"{rel}/{n}" if rel else n
        rr = f"{rel_root}/{n}" if rel_root else n
        st = os.lstat(p)
        excluded = ignore.matches(rr) or excl.matches(r)
        if stat.S_ISDIR(st.st_mode):
            if excluded and not (ignore.may_match_below(rr) or excl.may_match_below(r)):
                continue
            if not excluded:
                _record(h, r, p, st, memo)
            _walk(h, p, r, rr, ignore, excl, memo)
        elif not excluded:
            _record(h, r, p, st, memo)


def checksum_sources(root: Path, src_paths: Sequence[str], *, excludes: Sequence[str] = (),
                     copy_excludes: Sequence[str] = (), follow_top_symlinks: bool = True,
                     memo: ChecksumMemo | None = None) -> Digest:
    """Digest of what a COPY of `src_paths` from `root` would read. `excludes` are .dockerignore
    patterns (relative to root), `copy_excludes` COPY --exclude patterns (relative to each
    source). A missing literal path raises SourceError; a wildcard without match adds nothing.
    Saves `memo` (when given) before returning."""
    root = Path(root)
    ignore = PathMatcher(excludes)
    excl = PathMatcher(copy_excludes)
    h = hashlib.sha256(f"pybuild-contenthash-v{CONTENTHASH_VERSION}\n".encode())
    for pat in src_paths:
        h.update(json.dumps(["src", pat]).encode() + b"\n")
        matches = resolve_sources(root, pat, follow_symlinks=follow_top_symlinks, ignore=ignore)
        if not matches and not has_wildcards(pat):
            raise SourceError(f"{pat}: not found")
        for m in matches:
            try:
                st = os.lstat(m.host)
                h.update(json.dumps(["match", m.rel_base]).encode("utf-8", "surrogateescape") + b"\n")
                _record(h, "", m.host, st, memo)
                if stat.S_ISDIR(st.st_mode):
                    _walk(h, m.host, "", m.rel, ignore, excl, memo)
            except PermissionError as e:       # the context must be readable, as for docker build
                raise SourceError(f"cannot read {os.fsdecode(e.filename or m.rel)!r} in the build "
                                  f"context: permission denied") from e
    if memo is not None:
        memo.save()
    return Digest("sha256", h.hexdigest())
