"""Remove a directory tree without recursion and without following symlinks.

A step can leave a tree of any depth (a RUN that makes a 1,100-deep directory chain): Python's
`shutil.rmtree` recurses once per level and fails past the interpreter's limit, and path-based
removal fails past PATH_MAX. This walks with directory fds, keeps at most `MAX_DEPTH` of them
open, and moves a deeper subtree up to the top directory to be removed from there, so memory,
open fds and path lengths stay bounded whatever the depth. Directories without search or write
permission (overlay work dirs) are made accessible first; a symlink is removed, never followed."""
from __future__ import annotations

import itertools
import os
import stat
from pathlib import Path

MAX_DEPTH = 32
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def remove_tree(path: Path) -> None:
    """rm -rf `path` (a missing path is not an error)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(path)
        return
    parent = os.open(os.path.dirname(os.path.abspath(path)) or "/", _DIR_FLAGS)
    try:
        name = os.path.basename(os.path.abspath(path))
        top = _open_dir(parent, name)
        try:
            _empty(top)
        finally:
            os.close(top)
        os.rmdir(name, dir_fd=parent)
    finally:
        os.close(parent)


def _open_dir(parent: int, name: str) -> int:
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent)
    except PermissionError:
        os.chmod(name, 0o700, dir_fd=parent, follow_symlinks=False)
        return os.open(name, _DIR_FLAGS, dir_fd=parent)


def _scan(fd: int) -> list[str]:
    """Unlink every non-directory in `fd`; the names of its subdirectories."""
    try:
        entries = list(os.scandir(fd))
    except PermissionError:
        os.fchmod(fd, 0o700)
        entries = list(os.scandir(fd))
    subdirs = []
    for e in entries:
        if e.is_dir(follow_symlinks=False):
            subdirs.append(e.name)
            continue
        try:
            os.unlink(e.name, dir_fd=fd)
        except PermissionError:
            os.fchmod(fd, 0o700)
            os.unlink(e.name, dir_fd=fd)
    return subdirs


def _empty(top: int) -> None:
    """Remove everything inside the directory `top` (not `top` itself)."""
    moved = itertools.count()
    chain: list[tuple[int, str]] = [(top, "")]          # (fd, name in the parent) from top down
    while chain:
        fd, name = chain[-1]
        subdirs = _scan(fd)
        if not subdirs:
            chain.pop()
            if chain:                                     # not top: remove the empty dir
                os.close(fd)
                os.rmdir(name, dir_fd=chain[-1][0])
            continue
        if len(chain) >= MAX_DEPTH:                       # too deep: hand the subtrees to top
            for sub in subdirs:
                os.rename(sub, f".rm-{os.getpid()}-{next(moved)}", src_dir_fd=fd, dst_dir_fd=top)
            continue
        chain.append((_open_dir(fd, subdirs[0]), subdirs[0]))
