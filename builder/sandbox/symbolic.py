"""Symbolic file modes (`COPY --chmod=u+x,go=rX`) applied to one entry's own mode, as BuildKit
v0.25 applies them: clauses `[ugoa]*` then one or more `[-+=]` with `[rwxXst]*` or a class to copy
(`g=u`); no class means all (no umask); `X` is execute for a directory or for a file that already
has an execute bit; `s` is setuid with `u`, setgid with `g`; `t` (sticky) only with `a` or no class.
"""
from __future__ import annotations

import re

_CLAUSE = re.compile(r"([ugoa]*)((?:[-+=](?:[ugo]|[rwxXst]*))+)")
_ACTION = re.compile(r"([-+=])([ugo]|[rwxXst]*)")
_SHIFT = {"u": 6, "g": 3, "o": 0}


def valid(spec: str) -> bool:
    return bool(spec) and all(_CLAUSE.fullmatch(part) for part in spec.split(","))


def _perm_bits(perms: str, who: str, mode: int, is_dir: bool) -> int:
    """The bits `perms` names for the classes in `who`."""
    if perms in _SHIFT:                       # copy another class's rwx bits
        rwx = (mode >> _SHIFT[perms]) & 7
        return sum(rwx << _SHIFT[w] for w in who)
    bits = 0
    for w in who:
        s = _SHIFT[w]
        bits |= (4 << s if "r" in perms else 0) | (2 << s if "w" in perms else 0)
        if "x" in perms or ("X" in perms and (is_dir or mode & 0o111)):
            bits |= 1 << s
    if "s" in perms:
        bits |= (0o4000 if "u" in who else 0) | (0o2000 if "g" in who else 0)
    return bits


def apply(spec: str, mode: int, *, is_dir: bool) -> int:
    """`mode` (permission and special bits) changed by the symbolic `spec`; ValueError if invalid."""
    if not valid(spec):
        raise ValueError(f"invalid symbolic mode {spec!r}")
    for part in spec.split(","):
        m = _CLAUSE.fullmatch(part)
        assert m is not None
        classes = m.group(1)
        who = "ugo" if not classes or "a" in classes else classes
        sticky_ok = not classes or "a" in classes
        for op, perms in _ACTION.findall(m.group(2)):
            bits = _perm_bits(perms, who, mode, is_dir)
            if "t" in perms and sticky_ok:
                bits |= 0o1000
            if op == "+":
                mode |= bits
            elif op == "-":
                mode &= ~bits
            else:
                clear = sum(7 << _SHIFT[w] for w in who) | (0o4000 if "u" in who else 0) \
                    | (0o2000 if "g" in who else 0) | (0o1000 if sticky_ok else 0)
                mode = (mode & ~clear) | bits
    return mode & 0o7777
