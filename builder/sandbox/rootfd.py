"""Operations on a tree a step controlled, by paths relative to its root, that never follow a
symlink and never leave the root: what the worker does to a snapshot after a step (mount-point
stub removal, overlay copy-up clean-up and hard-link relinking in `builder.sandbox.commit`).

A step may have replaced any directory on those paths with a symlink to a host path (`/a ->
/etc`): a path-based `rmdir(fs/a/b)` would then act on the host. `RootDir` walks a relative path
one component at a time on directory fds opened with O_NOFOLLOW|O_DIRECTORY (the semantics of
openat2's RESOLVE_NO_SYMLINKS|RESOLVE_BENEATH): a component that is a symlink, not a directory,
missing, or "..", makes the path unreachable (`Unreachable`, a FileNotFoundError), and the
final operation is done on the parent's fd with `follow_symlinks=False`. Unlike
`builder.layer.inroot.resolve` (which follows symlinks inside the root, as a step's own view of
its paths does), nothing here follows any symlink: the worker's clean-ups only ever mean the
entry they made, and an entry the step replaced is no longer theirs.
"""
from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path
from typing import Iterator

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class Unreachable(FileNotFoundError):
    """The path cannot be reached without following a symlink (or does not exist)."""


def _parts(rel: str) -> list[str]:
    parts = [c for c in rel.split("/") if c not in ("", ".")]
    if ".." in parts:
        raise Unreachable(errno.ENOENT, f"'..' in {rel!r}")
    return parts


class RootDir:
    """A directory opened once by fd; every method takes a path relative to it. A context
    manager (closes the fd). Not thread-safe (one step's clean-up owns it)."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self.fd = os.open(self.path, _DIR)

    def __enter__(self) -> "RootDir":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    @contextlib.contextmanager
    def dir(self, rel: str) -> Iterator[int]:
        """An fd of the directory `rel` (the root for ""), reached without following symlinks."""
        fd = os.dup(self.fd)
        try:
            for c in _parts(rel):
                try:
                    nfd = os.open(c, _DIR, dir_fd=fd)
                except OSError as e:
                    if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                        raise Unreachable(e.errno, f"{rel!r}: {e.strerror}") from None
                    raise
                os.close(fd)
                fd = nfd
            yield fd
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def parent(self, rel: str) -> Iterator[tuple[int, str]]:
        """(fd of the directory holding `rel`, the last component). `rel` must not be the root."""
        parts = _parts(rel)
        if not parts:
            raise Unreachable(errno.ENOENT, "the root has no parent here")
        with self.dir("/".join(parts[:-1])) as fd:
            yield fd, parts[-1]

    def lstat(self, rel: str) -> os.stat_result | None:
        """The entry's own stat, None when it is unreachable (or cannot be searched)."""
        try:
            if not _parts(rel):
                return os.fstat(self.fd)
            with self.parent(rel) as (fd, name):
                return os.lstat(name, dir_fd=fd)
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            return None

    def listdir(self, rel: str) -> list[str]:
        with self.dir(rel) as fd:
            return os.listdir(fd)

    def getxattr(self, rel: str, attr: str) -> bytes | None:
        """A directory's extended attribute, None when it has none (or is unreachable)."""
        try:
            with self.dir(rel) as fd:
                return os.getxattr(fd, attr)
        except OSError:
            return None

    def rmdir(self, rel: str) -> None:
        with self.parent(rel) as (fd, name):
            os.rmdir(name, dir_fd=fd)

    def unlink(self, rel: str) -> None:
        with self.parent(rel) as (fd, name):
            os.unlink(name, dir_fd=fd)

    def utime(self, rel: str, ns: tuple[int, int]) -> None:
        """Set the times of `rel` itself (a symlink's own, never its target's)."""
        if not _parts(rel):
            os.utime(self.fd, ns=ns)
            return
        with self.parent(rel) as (fd, name):
            os.utime(name, ns=ns, dir_fd=fd, follow_symlinks=False)

    def mkdir(self, rel: str, st: os.stat_result) -> None:
        """Create directory `rel` with the mode, owner and times of `st`."""
        with self.parent(rel) as (fd, name):
            os.mkdir(name, 0o700, dir_fd=fd)
            os.chown(name, st.st_uid, st.st_gid, dir_fd=fd, follow_symlinks=False)
            os.chmod(name, stat.S_IMODE(st.st_mode), dir_fd=fd)
            os.utime(name, ns=(st.st_atime_ns, st.st_mtime_ns), dir_fd=fd, follow_symlinks=False)

    def link(self, src: str, dst: str) -> None:
        """A hard link `dst` to the entry `src` (itself, never a symlink's target)."""
        with self.parent(src) as (sfd, sname), self.parent(dst) as (dfd, dname):
            os.link(sname, dname, src_dir_fd=sfd, dst_dir_fd=dfd, follow_symlinks=False)
