"""The one reader of an image's /etc/passwd and /etc/group, and the two ways ids are resolved
from them (standard library only: the step init imports it).

- `resolve_user(spec, passwd, groups)`: a RUN step's USER as runc does it (uid, gid,
  supplementary gids, home).
- `resolve_owner(user, group, passwd, groups)`: a COPY/ADD/mkdir `--chown` as BuildKit does it
  (unknown names give 0).

Lines that are blank, comments, or whose ids are not numbers are skipped.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class PasswdEntry:
    name: str
    uid: int
    gid: int | None         # None when the line has no (numeric) gid field
    home: str


@dataclass(frozen=True, slots=True, kw_only=True)
class GroupEntry:
    name: str
    gid: int
    members: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class UserIds:
    uid: int
    gid: int
    groups: tuple[int, ...]     # supplementary gids, without the primary one
    home: str


class UnknownUser(LookupError):
    """A USER name (or group name) that the image's files do not have; the message says which."""


def _lines(path: str) -> list[list[str]]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return [ln.rstrip("\n").split(":") for ln in f if ln.strip() and not ln.startswith("#")]
    except OSError:
        return []


def read_passwd(path: str) -> list[PasswdEntry]:
    """The entries of a passwd file (none when it cannot be read)."""
    out = []
    for f in _lines(path):
        if len(f) >= 3 and f[2].isdigit():
            gid = int(f[3]) if len(f) > 3 and f[3].isdigit() else None
            out.append(PasswdEntry(name=f[0], uid=int(f[2]), gid=gid, home=f[5] if len(f) > 5 else ""))
    return out


def read_group(path: str) -> list[GroupEntry]:
    """The entries of a group file (none when it cannot be read)."""
    out = []
    for f in _lines(path):
        if len(f) >= 3 and f[2].isdigit():
            members = tuple(m for m in f[3].split(",") if m) if len(f) > 3 else ()
            out.append(GroupEntry(name=f[0], gid=int(f[2]), members=members))
    return out


def resolve_user(spec: str, passwd: list[PasswdEntry], groups: list[GroupEntry]) -> UserIds:
    """A USER spec (`name`, `uid`, `name:group`, `uid:gid`, `:group`; an empty name is root) as
    BuildKit v0.25 runs it: uid:gid both numeric → no lookup; the primary gid is always a
    supplementary group too, and the user's /etc/group memberships are added only when no group
    is given; home "/" for a user not in passwd. Raises UnknownUser."""
    user, _, group = (spec or "0").partition(":")
    user = user or "0"
    users = [p for p in passwd if p.gid is not None]
    match = next((p for p in users if p.name == user), None)
    if match is None and user.isdigit():
        match = next((p for p in users if p.uid == int(user)), None)
    home = match.home if match is not None and match.home else "/"
    if user.isdigit() and group.isdigit():
        return UserIds(uid=int(user), gid=int(group), groups=(int(group),), home=home)
    if match is None:
        if not user.isdigit():
            raise UnknownUser(f"unable to find user {user}: no matching entries in passwd file")
        uid, gid, name = int(user), 0, None
    else:
        uid, gid, name = match.uid, match.gid or 0, match.name
    if group:
        g = next((g for g in groups if g.name == group), None)
        if g is not None:
            return UserIds(uid=uid, gid=g.gid, groups=(g.gid,), home=home)
        if group.isdigit():
            return UserIds(uid=uid, gid=int(group), groups=(int(group),), home=home)
        raise UnknownUser(f"unable to find group {group}: no matching entries in group file")
    sgids: list[int] = [gid]
    if name is not None:
        for g in groups:
            if name in g.members and g.gid not in sgids:
                sgids.append(g.gid)
    return UserIds(uid=uid, gid=gid, groups=tuple(sgids), home=home)


def resolve_owner(user: str, group: str, passwd: list[PasswdEntry], groups: list[GroupEntry]) -> tuple[int, int]:
    """(uid, gid) of a `--chown=user:group` with BuildKit's rules: numeric ids as they are, an
    unknown name gives 0, a user without group gets the user's primary gid (numeric user: the
    same number)."""
    uid = gid = 0
    if user.isdigit():
        uid = gid = int(user)
    elif user:
        hit = next((p for p in passwd if p.name == user), None)
        if hit is not None:
            uid, gid = hit.uid, hit.gid or 0
    if group.isdigit():
        gid = int(group)
    elif group:
        g = next((g for g in groups if g.name == group), None)
        if g is not None:
            gid = g.gid
    return uid, gid
