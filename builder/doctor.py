"""`pybuild doctor`: checks what rootless builds need on this machine and says, for each failure,
the exact fix.

Each check reads the machine through a `Machine` (files under /proc and /etc, programs on PATH,
the calling user), so tests can give it another one. The last check starts the real sandbox
worker in a temporary root: whatever the files say, that is the proof.

Checks: user namespaces (sysctls, Ubuntu's AppArmor restriction, Docker's default seccomp profile
refusing `unshare` inside a container), the subordinate id ranges and newuidmap/newgidmap, cgroup
v2 and delegation (for step limits), libseccomp, and the sandbox worker itself (user namespace, id
maps, overlay or the copying fallback).
"""
from __future__ import annotations

import ctypes.util
import os
import pwd
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

from builder.errors import PybuildError
from builder.sandbox.userns import parse_subid_file

Status = Literal["ok", "warn", "fail"]
USERNS_SYSCTLS = {
    "kernel/unprivileged_userns_clone": ("1", "sysctl -w kernel.unprivileged_userns_clone=1"),
    "kernel/apparmor_restrict_unprivileged_userns": (
        "0", "sysctl -w kernel.apparmor_restrict_unprivileged_userns=0  (or, narrower, an AppArmor "
             "profile allowing `userns,` for the python that runs pybuild: see README, Rootless)"),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str = ""


@dataclass(frozen=True, kw_only=True)
class Machine:
    """Where the checks look (the real machine by default)."""
    proc: Path = Path("/proc")
    etc: Path = Path("/etc")
    cgroup: Path = Path("/sys/fs/cgroup")
    uid: int = field(default_factory=os.getuid)
    which: Callable[[str], str | None] = shutil.which
    find_library: Callable[[str], str | None] = ctypes.util.find_library

    def read(self, path: Path) -> str | None:
        try:
            return path.read_text()
        except OSError:
            return None

    def user(self) -> str:
        try:
            return pwd.getpwuid(self.uid).pw_name
        except KeyError:
            return str(self.uid)


def check_userns(m: Machine) -> list[Check]:
    """The sysctls and restrictions that decide whether unprivileged user namespaces work."""
    out: list[Check] = []
    max_ns = (m.read(m.proc / "sys/user/max_user_namespaces") or "").strip()
    if max_ns == "0":
        out.append(Check(name="user namespaces", status="fail", detail="user.max_user_namespaces is 0",
                         fix="sysctl -w user.max_user_namespaces=15000"))
    for key, (want, fix) in USERNS_SYSCTLS.items():
        got = (m.read(m.proc / "sys" / key) or "").strip()
        if got and got != want and m.uid != 0:
            out.append(Check(name="user namespaces", status="fail", detail=f"{key.replace('/', '.')} is {got}",
                             fix=fix))
    status = m.read(m.proc / "self/status") or ""
    seccomp = next((ln.split(":", 1)[1].strip() for ln in status.splitlines() if ln.startswith("Seccomp:")), "0")
    if seccomp == "2":
        out.append(Check(name="seccomp of this process", status="warn",
                         detail="pybuild runs under a seccomp filter (a container?); Docker's default "
                                "profile refuses unshare(CLONE_NEWUSER)",
                         fix="run the container with --security-opt seccomp=unconfined (or a profile "
                             "allowing unshare/clone with CLONE_NEWUSER), or run pybuild on the host"))
    if not out:
        out.append(Check(name="user namespaces", status="ok", detail="allowed by the kernel settings"))
    return out


def check_subids(m: Machine) -> list[Check]:
    """Subordinate ranges (and the setuid helpers that use them) for an unprivileged user."""
    if m.uid == 0:
        return [Check(name="subordinate ids", status="ok", detail="root maps ids itself")]
    name = m.user()
    out: list[Check] = []
    fix = f"usermod --add-subuids 100000-165535 --add-subgids 100000-165535 {name}  (as root)"
    for f in ("subuid", "subgid"):
        if parse_subid_file(m.read(m.etc / f) or "", name=name, uid=m.uid) is None:
            out.append(Check(name=f"/etc/{f}", status="warn",
                             detail=f"no range of 65536 ids for {name}: steps can only run as root "
                                    "inside (USER app, chown fail)", fix=fix))
    for prog in ("newuidmap", "newgidmap"):
        if m.which(prog) is None:
            out.append(Check(name=prog, status="warn", detail=f"{prog} not found: the ranges cannot be used",
                             fix="apt-get install uidmap"))
    return out or [Check(name="subordinate ids", status="ok", detail=f"{name} has ranges and newuidmap")]


def check_cgroups(m: Machine) -> list[Check]:
    """cgroup v2 and whether our cgroup is delegated (for per-step memory and pid limits)."""
    if m.read(m.cgroup / "cgroup.controllers") is None:
        return [Check(name="cgroups", status="warn", detail="no cgroup v2 at /sys/fs/cgroup: step limits "
                      "(memory, pids) are not available", fix="boot with systemd.unified_cgroup_hierarchy=1")]
    own = (m.read(m.proc / "self/cgroup") or "").strip().rpartition("::")[2] or "/"
    mine = m.cgroup / own.lstrip("/")
    if os.access(mine, os.W_OK):
        return [Check(name="cgroups", status="ok", detail=f"cgroup v2, {own} is writable (delegated)")]
    return [Check(name="cgroups", status="warn", detail=f"cgroup v2, but {own} is not delegated to you: "
                  "step limits (memory, pids) are not available",
                  fix="run pybuild in a delegated unit: systemd-run --user -p Delegate=yes --scope pybuild ...")]


def check_seccomp_library(m: Machine) -> list[Check]:
    if m.find_library("seccomp") is None:
        return [Check(name="libseccomp", status="fail", detail="libseccomp.so.2 not found",
                      fix="apt-get install libseccomp2")]
    return [Check(name="libseccomp", status="ok", detail="libseccomp found")]


def check_network_helper() -> list[Check]:
    """RUN steps reach the network through slirp4netns and /dev/net/tun."""
    from builder.sandbox.netns import stack_problem
    why = stack_problem()
    if why is None:
        return [Check(name="step network", status="ok", detail="slirp4netns and /dev/net/tun usable")]
    return [Check(name="step network", status="fail", detail="RUN steps cannot get their own network", fix=why)]


def check_worker() -> list[Check]:
    """Start the real sandbox worker in a temporary root: user namespace, id maps, snapshotter."""
    from builder.sandbox.client import SandboxOptions, Worker
    from builder.store.content import ContentStore
    with tempfile.TemporaryDirectory(prefix="pybuild-doctor-") as tmp:
        try:
            with Worker(ContentStore(Path(tmp)), SandboxOptions(root=Path(tmp))) as w:
                name = w.snapshotter_name
        except PybuildError as e:
            return [Check(name="sandbox worker", status="fail", detail=str(e),
                          fix="see the failures above; on Ubuntu 24.04 the AppArmor restriction is the usual cause")]
    if name == "overlay":
        return [Check(name="sandbox worker", status="ok", detail="starts; overlay snapshots in the user namespace")]
    return [Check(name="sandbox worker", status="warn", detail="starts; overlay is not allowed in the user "
                  "namespace here, so snapshots are copied (slower)", fix="Linux 5.11 or later")]


def check_step_limits() -> list[Check]:
    """What the sandbox itself says about --step-memory / --step-pids on this machine."""
    from builder.sandbox.cgroups import Limits, probe
    why = probe(Limits(memory=1 << 30, pids=1024))
    if why is None:
        return [Check(name="step limits", status="ok", detail="--step-memory and --step-pids can be applied")]
    return [Check(name="step limits", status="warn", detail=f"--step-memory/--step-pids would fail: {why}",
                  fix="run pybuild in a delegated cgroup: systemd-run --user --scope -p Delegate=yes pybuild ...")]


def run_checks(m: Machine | None = None, *, start_worker: bool = True) -> list[Check]:
    real = m is None
    m = m or Machine()
    checks = [*check_userns(m), *check_subids(m), *check_cgroups(m), *check_seccomp_library(m)]
    if real:
        checks += check_step_limits() + check_network_helper()
    if start_worker:
        checks += check_worker()
    return checks


def render(checks: list[Check]) -> str:
    """One line a check (`ok`/`warn`/`FAIL`), the fix indented under each that is not ok."""
    lines = []
    for c in checks:
        mark = {"ok": "ok  ", "warn": "warn", "fail": "FAIL"}[c.status]
        lines.append(f"{mark}  {c.name}: {c.detail}")
        if c.fix and c.status != "ok":
            lines.append(f"      fix: {c.fix}")
    return "\n".join(lines) + "\n"
