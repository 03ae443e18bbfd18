"""Nothing outlives the build: pybuild killed with SIGKILL in the middle of a RUN takes its
namespace worker and every process of the step with it, and the disk stops filling at once
(issue 6: "a killed build leaves its namespace worker running and writing"). As root and as the
unprivileged CI user, with both snapshotters."""
from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from builder.sandbox.initpool import children

from conftest import make_context, pybuild_cmd

SNAPSHOTTERS = ["overlay", "native"]
USERS = ["root", "unpriv"]


# ---------------------------------------------------------------------- process helpers

def _stat(pid: int) -> tuple[str, int] | None:
    """(state, start time) of `pid`, None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2:].split()
    return fields[0], int(fields[19])


def _descendants(pid: int) -> dict[int, int]:
    """Every process below `pid`: pid → start time (to tell a reused pid apart)."""
    out: dict[int, int] = {}
    todo = children(pid)
    while todo:
        p = todo.pop()
        st = _stat(p)
        if st is not None and p not in out:
            out[p] = st[1]
            todo += children(p)
    return out


def _alive(procs: dict[int, int]) -> list[int]:
    """The processes of `procs` still running (not gone, not a zombie, not a reused pid)."""
    out = []
    for pid, start in procs.items():
        st = _stat(pid)
        if st is not None and st[0] not in ("Z", "X") and st[1] == start:
            out.append(pid)
    return out


def _pgrep(marker: str) -> list[int]:
    r = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True)
    return [int(x) for x in r.stdout.split()]


def _du(root: Path) -> int:
    """Bytes written under `root` (the sizes of its files: blocks the file system allocates later,
    at writeback, would look like growth when nothing writes any more)."""
    total = 0
    for dirpath, dirs, files in os.walk(root):
        for n in dirs + files:
            try:
                total += os.lstat(os.path.join(dirpath, n)).st_size
            except OSError:
                pass
    return total


def _wait(cond, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def _start(user: str, unpriv_user: str, ctx: Path, root: Path, snapshotter: str) -> tuple[subprocess.Popen, int]:
    """Start `pybuild build ctx`; (the Popen, the pid of the pybuild process itself)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/tmp", "PYBUILD_ROOT": str(root),
           "PYBUILD_SNAPSHOTTER": snapshotter}
    cmd = pybuild_cmd() + ["build", str(ctx), "--progress", "plain"]
    if user == "root":
        p = subprocess.Popen(cmd, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             cwd="/tmp")
        return p, p.pid
    p = subprocess.Popen(["runuser", "-u", unpriv_user, "--", "env", *(f"{k}={v}" for k, v in env.items()), *cmd],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/tmp")
    kids = _wait(lambda: children(p.pid), 30, "runuser to start pybuild")
    return p, kids[0]


def _context(workdir: Path, user: str, unpriv_user: str, dockerfile: str) -> Path:
    ctx = make_context(workdir / "ctx", {"Dockerfile": dockerfile}, owner=unpriv_user if user != "root" else None)
    os.chmod(ctx, 0o755)
    return ctx


def _kill_and_check(proc: subprocess.Popen, pid: int, marker: str) -> None:
    """SIGKILL pybuild `pid`; within a few seconds no process it started is left."""
    before = _descendants(pid)
    assert before, "pybuild had started no worker"
    os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=30)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (_alive(before) or _pgrep(marker)):
        time.sleep(0.1)
    assert _alive(before) == [], f"processes of the killed build survive: {_alive(before)}"
    assert _pgrep(marker) == [], "a step process survives"


# ---------------------------------------------------------------------- tests

@pytest.mark.parametrize("snapshotter", SNAPSHOTTERS)
@pytest.mark.parametrize("user", USERS)
def test_sigkill_of_pybuild_mid_run_kills_worker_and_step(workdir, base_image, unpriv_user, user, snapshotter):
    marker = f"pb-life-{uuid.uuid4().hex[:12]}"
    secs = 900000 + int(uuid.uuid4().int % 90000)     # a unique command line for `sleep` too
    # The step also leaves a daemon behind in its own session: it must die with the rest.
    ctx = _context(workdir, user, unpriv_user,
                   f"FROM {base_image}\nRUN setsid sleep {secs} & echo {marker} && sleep {secs}\n")
    p, pid = _start(user, unpriv_user, ctx, workdir / "root", snapshotter)
    try:
        _wait(lambda: len(_pgrep(f"sleep {secs}")) >= 2, 90, "the RUN step to start")
        _kill_and_check(p, pid, f"sleep {secs}")
    finally:
        if p.poll() is None:
            p.kill()


@pytest.mark.parametrize("snapshotter", SNAPSHOTTERS)
@pytest.mark.parametrize("user", USERS)
def test_sigkill_of_pybuild_mid_write_stops_disk_growth(workdir, base_image, unpriv_user, user, snapshotter):
    marker = f"pb-life-{uuid.uuid4().hex[:12]}"
    # At most ~1.5 GB, a MiB every few ms: still writing when pybuild is killed.
    ctx = _context(workdir, user, unpriv_user,
                   f"FROM {base_image}\nRUN i=0; while [ $i -lt 1500 ]; do head -c 1048576 /dev/zero >> /big; "
                   f"i=$((i+1)); sleep 0.005; done; echo {marker}\n")
    root = workdir / "root"
    p, pid = _start(user, unpriv_user, ctx, root, snapshotter)
    try:
        _wait(lambda: _du(root) > 64 << 20, 90, "the RUN step to write 64 MiB")
        _kill_and_check(p, pid, marker)
        first = _du(root)
        time.sleep(2)
        assert _du(root) <= first, "the disk still fills after pybuild was killed"
        assert first < 1400 << 20, "the step was not stopped before it finished"
    finally:
        if p.poll() is None:
            p.kill()


def _zeros_archive(path: Path, files: int, size: int) -> None:
    """A gzip'd tar of `files` files of `size` zero bytes (small on disk, large unpacked)."""
    import gzip
    import tarfile
    zero = bytes(1 << 20)

    class Zeros:
        def __init__(self) -> None:
            self.left = size

        def read(self, n: int = -1) -> bytes:
            n = self.left if n < 0 else min(n, self.left)
            self.left -= n
            return zero[:n] if n <= len(zero) else bytes(n)

    with gzip.open(path, "wb", compresslevel=1) as gz, tarfile.open(fileobj=gz, mode="w|") as tf:
        for i in range(files):
            ti = tarfile.TarInfo(f"z/{i:05d}")
            ti.size = size
            tf.addfile(ti, Zeros())


@pytest.mark.parametrize("snapshotter", SNAPSHOTTERS)
@pytest.mark.parametrize("user", USERS)
def test_sigkill_of_pybuild_mid_large_add_stops_disk_growth(workdir, base_image, unpriv_user, user, snapshotter):
    marker = f"pb-life-{uuid.uuid4().hex[:12]}"
    ctx = _context(workdir, user, unpriv_user, f"FROM {base_image}\nADD big.tar.gz /{marker}/\n")
    _zeros_archive(ctx / "big.tar.gz", files=1500, size=1 << 20)     # ~1.5 GB unpacked
    os.chmod(ctx / "big.tar.gz", 0o644)
    root = workdir / "root"
    p, pid = _start(user, unpriv_user, ctx, root, snapshotter)
    try:
        _wait(lambda: _du(root) > 64 << 20, 90, "the ADD to unpack 64 MiB")
        _kill_and_check(p, pid, marker)
        first = _du(root)
        time.sleep(2)
        assert _du(root) <= first, "the disk still fills after pybuild was killed"
        assert first < 1400 << 20, "the ADD was not stopped before it finished"
    finally:
        if p.poll() is None:
            p.kill()
