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
  into dest, keeping owners/modes/links, capped by `limit` against decompression bombs; anything
  else is copied.
- `exclude` patterns match relative to each source, `SourceDir.excludes` (.dockerignore) relative
  to the source root; `parents` keeps the source's directories below an optional "/./" pivot.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

from builder.errors import SourceError
from builder.layer.limits import ExpandLimit
from builder.layer.tar import remove_path, resolve_in_root
from builder.sandbox.copying import copy_action
from builder.sandbox.dest import lchown, mkdir_all, resolve_chown
from builder.layer.sources import SourceDir, SourceMatch, has_wildcards, resolve_sources
from builder.solve import ops

__all__ = ["SourceDir", "SourceMatch", "apply_file_op", "resolve_sources", "resolve_chown",
           "has_wildcards"]


def _mkdir_action(root: Path, a: ops.Mkdir) -> None:
    owner = resolve_chown(root, a.chown) or (0, 0)
    target = resolve_in_root(root, a.path)
    if target == root or os.path.isdir(target):
        return
    if a.make_parents:
        mkdir_all(root, target.parent, a.mode & 0o7777, owner)
    elif not target.parent.is_dir():
        raise SourceError(f"{a.path}: parent directory does not exist")
    if os.path.lexists(target):
        raise SourceError(f"{a.path}: exists and is not a directory")
    os.mkdir(target, 0o700)
    lchown(target, *owner)
    os.chmod(target, a.mode & 0o7777)


def _mkfile_action(root: Path, a: ops.Mkfile) -> None:
    owner = resolve_chown(root, a.chown) or (0, 0)
    target = resolve_in_root(root, a.path)
    mkdir_all(root, target.parent, 0o755, owner)
    if os.path.isdir(target) and not os.path.islink(target):
        raise SourceError(f"{a.path}: is a directory")
    remove_path(target)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with open(fd, "wb") as f:
        f.write(a.data)
    lchown(target, *owner)
    os.chmod(target, a.mode & 0o7777)


def apply_file_op(root: Path, op: ops.FileOp, sources: Mapping[int, SourceDir], *,
                  limit: ExpandLimit = ExpandLimit()) -> None:
    """Apply `op.actions` in order to the writable directory `root`. `sources[i]` is the tree of
    the op's input i (Copy.src). Raises SourceError for missing sources or impossible targets,
    IdMappingError when an owner cannot be set in this user namespace, LayerError for an ADD
    archive that is unsafe or expands beyond `limit` (a decompression bomb). On an error `root`
    may hold part of the op: the caller discards it (the worker aborts the snapshot)."""
    root = Path(root)
    for action in op.actions:
        if isinstance(action, ops.Copy):
            if action.src not in sources:
                raise SourceError(f"copy source input {action.src} is not available")
            copy_action(root, action, sources[action.src], limit=limit)
        elif isinstance(action, ops.Mkdir):
            _mkdir_action(root, action)
        elif isinstance(action, ops.Mkfile):
            _mkfile_action(root, action)
        else:
            raise TypeError(f"unknown file action {type(action).__name__}")
