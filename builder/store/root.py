"""The pybuild root ($PYBUILD_ROOT): created private (0700), and refused when another user owns
it or others may write to it — its blobs, snapshots, cache records, cache mounts and checksum
memo are trusted by every later build, so nobody else may be able to change (or read) them."""
from __future__ import annotations

import os
import stat
from pathlib import Path

from builder.errors import StoreError


def prepare_root(path: Path) -> Path:
    """Create `path` (mode 0700) or check the existing one; tighten an existing root of ours to
    0700. StoreError (naming the path and the fix) when another user owns it or group/others may
    write to it."""
    path = Path(path)
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.stat(path)
    except OSError as e:
        raise StoreError(f"pybuild root {path}: {e.strerror}") from e
    if not stat.S_ISDIR(st.st_mode):
        raise StoreError(f"pybuild root {path} is not a directory")
    me = os.geteuid()
    if st.st_uid != me:
        raise StoreError(f"pybuild root {path} belongs to uid {st.st_uid}, not to you (uid {me}): another "
                         "user could change what every build trusts; use a directory of your own "
                         "(PYBUILD_ROOT)")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise StoreError(f"pybuild root {path} is writable by others (mode {stat.S_IMODE(st.st_mode):04o}): "
                         f"run `chmod 700 {path}` or use another PYBUILD_ROOT")
    if stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(path, 0o700)
    return path
