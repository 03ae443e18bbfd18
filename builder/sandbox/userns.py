"""User-namespace id mapping for the sandbox worker.

Who maps what:
- root: the parent writes `/proc/PID/uid_map` and `gid_map` itself, an identity map of every id.
- an unprivileged user with an /etc/subuid and /etc/subgid range: container 0 → the user's own
  id, 1..65535 → the first 65535 ids of the subordinate range, via `newuidmap` / `newgidmap`.
- an unprivileged user without a range: container 0 → the user's own id only; setgroups is
  denied. Steps that need any other id fail with `IdMappingError` (see `require_ids`).
"""
from __future__ import annotations

import os
import pwd
import subprocess
from dataclasses import dataclass
from pathlib import Path

from builder.errors import IdMappingError, SandboxError

SUBID_COUNT = 65536          # container ids 0..65535 (nobody = 65534 must fit)
FULL_RANGE = 4294967295


@dataclass(frozen=True, slots=True, kw_only=True)
class IdMap:
    """What the worker's user namespace can represent: container ids 0..size-1 are mapped.
    `setgroups` tells whether setgroups(2) is allowed inside (false for a single-id map)."""
    size: int
    setgroups: bool
    user: str

    def can_map(self, *ids: int) -> bool:
        return all(0 <= i < self.size for i in ids)


@dataclass(frozen=True, slots=True, kw_only=True)
class SubIdRange:
    start: int
    count: int


def parse_subid_file(text: str, *, name: str, uid: int) -> SubIdRange | None:
    """The first range of at least 65535 ids for `name` (or its numeric uid) in an
    /etc/subuid-style text, or None."""
    for line in text.splitlines():
        parts = line.strip().split(":")
        if len(parts) != 3 or parts[0] not in (name, str(uid)):
            continue
        try:
            start, count = int(parts[1]), int(parts[2])
        except ValueError:
            continue
        if count >= SUBID_COUNT - 1:
            return SubIdRange(start=start, count=count)
    return None


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def how_to_add_range(user: str) -> str:
    return (f"user {user!r} has no subordinate id range in /etc/subuid and /etc/subgid, so only one id "
            f"can be mapped in the sandbox; add one, e.g. as root: "
            f"`usermod --add-subuids 100000-165535 --add-subgids 100000-165535 {user}`")


def plan(uid: int | None = None) -> tuple[IdMap, SubIdRange | None, SubIdRange | None]:
    """Decide the mapping for the calling user (without touching any process)."""
    uid = os.getuid() if uid is None else uid
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = str(uid)
    if uid == 0:
        return IdMap(size=FULL_RANGE, setgroups=True, user=name), None, None
    su = parse_subid_file(_read("/etc/subuid"), name=name, uid=uid)
    sg = parse_subid_file(_read("/etc/subgid"), name=name, uid=uid)
    if su is None or sg is None:
        return IdMap(size=1, setgroups=False, user=name), None, None
    return IdMap(size=SUBID_COUNT, setgroups=True, user=name), su, sg


def apply(pid: int, idmap: IdMap, su: SubIdRange | None, sg: SubIdRange | None) -> None:
    """Write the maps of process `pid`, which has just unshared its user namespace."""
    uid, gid = os.getuid(), os.getgid()
    proc = Path(f"/proc/{pid}")
    try:
        if uid == 0:
            (proc / "uid_map").write_text(f"0 0 {FULL_RANGE}\n")
            (proc / "gid_map").write_text(f"0 0 {FULL_RANGE}\n")
        elif su is not None and sg is not None:
            _run(["newuidmap", str(pid), "0", str(uid), "1", "1", str(su.start), str(SUBID_COUNT - 1)])
            _run(["newgidmap", str(pid), "0", str(gid), "1", "1", str(sg.start), str(SUBID_COUNT - 1)])
        else:
            (proc / "setgroups").write_text("deny\n")
            (proc / "uid_map").write_text(f"0 {uid} 1\n")
            (proc / "gid_map").write_text(f"0 {gid} 1\n")
    except OSError as e:
        raise SandboxError(f"cannot write the id map of the sandbox worker: {e}") from e


def _run(argv: list[str]) -> None:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except FileNotFoundError as e:
        raise SandboxError(f"{argv[0]} not found: install the `uidmap` package") from e
    if r.returncode != 0:
        raise SandboxError(f"{argv[0]} failed ({r.returncode}): {r.stderr.strip()}")


def unmapped_reason(idmap: IdMap) -> str:
    """Why an id is not mapped under `idmap`, and what to do: no subordinate range at all (add
    one), or an id past the mapped ones (a range exists, the id is outside it)."""
    if idmap.size <= 1:
        return how_to_add_range(idmap.user)
    return (f"the sandbox of user {idmap.user!r} maps ids 0-{idmap.size - 1} only (its own id and "
            f"{idmap.size - 1} ids of its subordinate range); use an id in that range")


def require_ids(idmap: IdMap, *ids: int, what: str) -> None:
    """Raise IdMappingError unless every id is mapped."""
    bad = sorted({i for i in ids if not idmap.can_map(i)})
    if bad:
        raise IdMappingError(f"{what} needs id(s) {', '.join(map(str, bad))}: {unmapped_reason(idmap)}")
