"""Per-step memory and pid limits through a delegated cgroup v2 (standard library only; used by
the worker, inside its user namespace, which sees the host's cgroup file system).

Only asked-for limits use cgroups: `StepCgroups.setup` raises `CgroupUnavailable` with the
reason (and the usual fix) when the build's cgroup is not a delegated cgroup v2 with the wanted
controllers; the worker then refuses to start, so a limit that was asked for is never silently
dropped. `probe()` gives the same reason without changing anything (for `pybuild doctor`).

Layout, in the cgroup C the build runs in (it must hold only pybuild's own processes, as in
`systemd-run --user --scope -p Delegate=yes pybuild build ...`): the processes of C move to
`C/pybuild-<pid>-main` (a cgroup with controllers enabled in its subtree may hold no process),
the controllers are enabled in `C/cgroup.subtree_control`, and each step's init is moved, before
it starts the step, into its own `C/pybuild-<pid>-s<n>` with `memory.max` (swap off) and
`pids.max`; the step's processes inherit it, and it is removed after the step.
"""
from __future__ import annotations

import errno
import os
import time
from dataclasses import dataclass

_FIX = ("run pybuild in a delegated cgroup v2, e.g. `systemd-run --user --scope -p Delegate=yes pybuild build "
        "...` (as root: `systemd-run --scope -p Delegate=yes ...`), or leave the step limits unset")


class CgroupUnavailable(Exception):
    """Step limits were asked for and cannot be applied here; the message says why and how."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """Per-step limits: bytes of memory, number of processes (None: no limit)."""
    memory: int | None = None
    pids: int | None = None

    def controllers(self) -> tuple[str, ...]:
        return tuple(c for c, v in (("memory", self.memory), ("pids", self.pids)) if v is not None)


def _cgroup2_mount() -> str | None:
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                left, _, right = line.partition(" - ")
                if right.split(" ", 1)[0] == "cgroup2":
                    return left.split()[4]
    except OSError:
        return None
    return None


def own_cgroup() -> str:
    """The directory of this process's cgroup v2; raises CgroupUnavailable when there is none."""
    mnt = _cgroup2_mount()
    if mnt is None:
        raise CgroupUnavailable(f"no cgroup v2 file system is mounted (cgroup v1 only): {_FIX}")
    rel = None
    with open("/proc/self/cgroup") as f:
        for line in f:
            if line.startswith("0::"):
                rel = line[3:].strip()
    if rel is None:
        raise CgroupUnavailable(f"this process is in no cgroup v2: {_FIX}")
    path = os.path.join(mnt, rel.lstrip("/"))
    if not os.path.isdir(path):
        raise CgroupUnavailable(f"the cgroup {rel} is not visible under {mnt}: {_FIX}")
    return path


def probe(limits: Limits) -> str | None:
    """Why `limits` cannot be applied here (None: they can, as far as can be seen without
    changing anything)."""
    try:
        _check(own_cgroup(), limits)
    except CgroupUnavailable as e:
        return str(e)
    return None


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _check(cg: str, limits: Limits) -> None:
    have = set(_read(os.path.join(cg, "cgroup.controllers")).split())
    missing = [c for c in limits.controllers() if c not in have]
    if missing:
        raise CgroupUnavailable(f"the cgroup {cg} has no {', '.join(missing)} controller (its cgroup.controllers: "
                                f"{' '.join(sorted(have)) or 'none'}), so it is not delegated: {_FIX}")
    for name in ("cgroup.procs", "cgroup.subtree_control"):
        if not os.access(os.path.join(cg, name), os.W_OK):
            raise CgroupUnavailable(f"{os.path.join(cg, name)} is not writable by this user: {_FIX}")


class StepCgroups:
    """The step cgroups of one worker (see the module doc). Thread-safe: one cgroup per request."""

    def __init__(self, cg: str, tag: str, limits: Limits) -> None:
        self.cg, self.tag, self.limits = cg, tag, limits

    @classmethod
    def setup(cls, limits: Limits, ours: set[int], tag: str) -> "StepCgroups":
        """Make the layout in this process's cgroup. `ours`: the pids that may be moved (pybuild
        and its worker); a cgroup that holds any other process is refused."""
        cg = own_cgroup()
        _check(cg, limits)
        procs = {int(x) for x in _read(os.path.join(cg, "cgroup.procs")).split()}
        strangers = sorted(procs - ours)
        if strangers:
            raise CgroupUnavailable(f"the cgroup {cg} also holds processes that are not pybuild's "
                                    f"({', '.join(map(str, strangers[:5]))}): {_FIX}")
        main = os.path.join(cg, f"pybuild-{tag}-main")
        try:
            os.makedirs(main, exist_ok=True)
            for pid in procs:
                _write(os.path.join(main, "cgroup.procs"), str(pid))
            _write(os.path.join(cg, "cgroup.subtree_control"), " ".join(f"+{c}" for c in limits.controllers()))
        except OSError as e:
            raise CgroupUnavailable(f"cannot set up step cgroups in {cg}: {e}: {_FIX}") from e
        return cls(cg, tag, limits)

    def _dir(self, n: int) -> str:
        return os.path.join(self.cg, f"pybuild-{self.tag}-s{n}")

    def enter(self, n: int, pid: int) -> None:
        """Move `pid` (a step's init, before it starts the step) into step `n`'s own cgroup."""
        d = self._dir(n)
        os.makedirs(d, exist_ok=True)
        if self.limits.memory is not None:
            _write(os.path.join(d, "memory.max"), str(self.limits.memory))
            if os.path.exists(os.path.join(d, "memory.swap.max")):
                _write(os.path.join(d, "memory.swap.max"), "0")
        if self.limits.pids is not None:
            _write(os.path.join(d, "pids.max"), str(self.limits.pids))
        _write(os.path.join(d, "cgroup.procs"), str(pid))

    def oom_killed(self, n: int) -> bool:
        """Did the kernel kill a process of step `n` for its memory limit?"""
        try:
            for line in _read(os.path.join(self._dir(n), "memory.events")).splitlines():
                k, _, v = line.partition(" ")
                if k == "oom_kill" and int(v or 0) > 0:
                    return True
        except (OSError, ValueError):
            pass
        return False

    def leave(self, n: int) -> None:
        """Remove step `n`'s cgroup once its processes are gone (best effort)."""
        for _ in range(50):
            try:
                os.rmdir(self._dir(n))
                return
            except FileNotFoundError:
                return
            except OSError as e:
                if e.errno != errno.EBUSY:
                    return
            time.sleep(0.02)
