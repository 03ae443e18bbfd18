"""The destination root of a file op: owners from its /etc/passwd and /etc/group
(`resolve_chown`), setting them in the user namespace (`lchown`), and missing parent
directories (`mkdir_all`), all resolved inside the root.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

from builder.errors import SourceError
from builder.layer.tar import lchown_mapped, resolve_in_root
from builder.layer.sources import relto
from builder.sandbox.users import read_group, read_passwd, resolve_owner
from builder.solve import ops


def resolve_chown(root: Path, chown: ops.Chown | None) -> tuple[int, int] | None:
    """(uid, gid) for a chown spec against root's /etc/passwd and /etc/group; None without one."""
    if chown is None:
        return None
    passwd = read_passwd(str(resolve_in_root(root, "etc/passwd"))) if chown.user and not chown.user.isdigit() else []
    groups = read_group(str(resolve_in_root(root, "etc/group"))) if chown.group and not chown.group.isdigit() else []
    return resolve_owner(chown.user, chown.group, passwd, groups)


def lchown(path: Path | bytes, uid: int, gid: int) -> None:
    lchown_mapped(path, uid, gid)


def mkdir_all(root: Path, path: Path, mode: int, owner: tuple[int, int]) -> None:
    """Create the missing directories of `path` (already resolved inside root)."""
    rel = relto(root, path)
    if not rel:
        return
    cur = root
    for comp in rel.split("/"):
        cur = cur / comp
        try:
            st = os.lstat(cur)
        except FileNotFoundError:
            os.mkdir(cur, 0o700)
            lchown(cur, *owner)
            os.chmod(cur, mode)
            continue
        if stat.S_ISLNK(st.st_mode):
            cur = resolve_in_root(root, relto(root, cur))
            if not cur.is_dir():
                raise SourceError(f"{relto(root, cur)}: not a directory")
        elif not stat.S_ISDIR(st.st_mode):
            raise SourceError(f"/{relto(root, cur)}: not a directory")
