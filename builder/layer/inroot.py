"""The one resolver of paths inside a root directory (standard library only: the step init
`builder.sandbox.nsinit` imports it before anything else is available).

`resolve(root, rel)` gives the host path of `rel` as if `root` were "/": ".." never climbs above
root, absolute symlink targets restart at root, and a symlink never leads out of it. What happens
to a component that does not exist is the caller's choice (`missing`):

- "keep": it is kept as written, and resolution goes on below it (layer extraction, COPY);
- "raise": the lstat error is raised (FileNotFoundError, or NotADirectoryError);
- a callable `create(rel, last)`: it must create the entry at `root/rel` (`last` tells that
  nothing follows it), which is then used as it is (mount-point stubs of a RUN step).

More than 40 symlinks on the way raise OSError(ELOOP).
"""
from __future__ import annotations

import errno
import os
import stat

TYPE_CHECKING = False       # typing is not imported at run time: the step init must start fast
if TYPE_CHECKING:
    from typing import Callable, Literal, Union
    CreateMissing = Callable[[str, bool], None]
    Missing = Union[Literal["keep", "raise"], CreateMissing]

MAX_SYMLINKS = 40


def split_components(rel: str | bytes) -> list[bytes]:
    """The components of `rel` as bytes, without empty ones and ".", ".." kept."""
    return [c for c in os.fsencode(rel).split(b"/") if c not in (b"", b".")]


def resolve(root: str | bytes | os.PathLike[str], rel: str | bytes, *, follow_final: bool = True,
            missing: Missing = "keep") -> str:
    """The host path (a str, undecodable bytes as surrogates) of `rel` inside `root`. With
    `follow_final=False` a final symlink is not followed (the link itself is meant)."""
    rootb = os.fsencode(root)
    pending = list(reversed(split_components(rel)))
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
            if missing == "raise":
                raise
            if missing != "keep" and not isinstance(missing, str):
                missing(os.fsdecode(b"/".join(resolved + [c])), not pending)
            resolved.append(c)
            continue
        if stat.S_ISLNK(st.st_mode) and (pending or follow_final):
            hops += 1
            if hops > MAX_SYMLINKS:
                raise OSError(errno.ELOOP, f"too many levels of symbolic links resolving {os.fsdecode(rel)!r}")
            target = os.readlink(cand)
            if target.startswith(b"/"):
                resolved = []
            pending.extend(reversed(split_components(target)))
            continue
        resolved.append(c)
    return os.fsdecode(rootb + b"/" + b"/".join(resolved)) if resolved else os.fsdecode(rootb)
