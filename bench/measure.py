"""Run one command and measure it: wall time, exit code, peak memory of its process tree, CPU.

Memory is measured two ways for the command's own process tree:
- `maxrss_kb`: `wait4()` ru_maxrss, the largest RSS any single process of the tree reached
  (Linux folds reaped descendants' peaks into the parent's), exact;
- `tree_peak_kb`: the sum of VmRSS over the whole live tree, sampled every 50 ms (approximate,
  counts shared pages once per process).
A daemon doing the real work (dockerd for BuildKit) is measured with `DaemonMemory`: it resets
the daemon's VmHWM through /proc/PID/clear_refs before the build and reads VmHWM after it.
Standard library only.
"""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True, kw_only=True)
class RunResult:
    """Outcome of one measured command. `seconds` is wall time from spawn to reap."""

    ok: bool
    exit_code: int | None
    timed_out: bool
    seconds: float
    maxrss_kb: int
    tree_peak_kb: int
    cpu_seconds: float
    log: str
    tail: str


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    out.extend(int(x) for x in f.read().split())
            except OSError:
                pass
    except OSError:
        pass
    return out


def _status_kb(pid: int, field: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def tree_rss_kb(root: int) -> int:
    """Sum of VmRSS (kB) over `root` and all its live descendants."""
    total, stack, seen = 0, [root], set()
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.add(pid)
        total += _status_kb(pid, "VmRSS")
        stack.extend(_children(pid))
    return total


def descendants(root: int) -> list[int]:
    """`root`'s live descendants (walked through /proc/PID/task/TID/children)."""
    out, stack = [], _children(root)
    while stack:
        pid = stack.pop()
        if pid not in out:
            out.append(pid)
            stack.extend(_children(pid))
    return out


def kill_tree(root: int) -> None:
    """SIGKILL `root`'s process group and every descendant, also those in other sessions."""
    victims = descendants(root)
    try:
        os.killpg(root, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _tail(path: Path, limit: int = 2000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - limit))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def run_measured(cmd: list[str], *, env: dict[str, str], log: Path, timeout: float,
                 cwd: Path | None = None) -> RunResult:
    """Run `cmd` with stdout+stderr to `log`; kill its process group after `timeout` seconds."""
    log.parent.mkdir(parents=True, exist_ok=True)
    reaped: dict[str, object] = {}
    done = threading.Event()
    peak = [0]
    with open(log, "wb") as out:
        t0 = time.perf_counter()
        try:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=env, cwd=cwd, start_new_session=True)
        except OSError as e:
            out.write(f"cannot start {cmd[0]}: {e}\n".encode())
            return RunResult(ok=False, exit_code=None, timed_out=False, seconds=0.0, maxrss_kb=0,
                             tree_peak_kb=0, cpu_seconds=0.0, log=str(log), tail=str(e))

        def waiter() -> None:
            _, status, ru = os.wait4(proc.pid, 0)
            reaped["t"] = time.perf_counter()
            reaped["status"], reaped["ru"] = status, ru
            done.set()

        def sampler() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], tree_rss_kb(proc.pid))
                done.wait(0.05)

        w = threading.Thread(target=waiter, daemon=True)
        s = threading.Thread(target=sampler, daemon=True)
        w.start()
        s.start()
        w.join(timeout)
        timed_out = w.is_alive()
        if timed_out:
            kill_tree(proc.pid)
            w.join()
        s.join()
    status, ru = reaped["status"], reaped["ru"]
    code = os.waitstatus_to_exitcode(status)  # type: ignore[arg-type]
    proc.returncode = code  # already reaped: keep Popen from waiting again
    seconds = float(reaped["t"]) - t0  # type: ignore[arg-type]
    ok = code == 0 and not timed_out
    return RunResult(ok=ok, exit_code=code, timed_out=timed_out, seconds=seconds,
                     maxrss_kb=int(ru.ru_maxrss), tree_peak_kb=peak[0],  # type: ignore[attr-defined]
                     cpu_seconds=float(ru.ru_utime + ru.ru_stime),  # type: ignore[attr-defined]
                     log=str(log), tail="" if ok else _tail(log))


@dataclass(frozen=True, slots=True, kw_only=True)
class DaemonPeak:
    """A daemon's memory and CPU over one build: RSS before, peak (VmHWM) during, CPU used."""

    rss_before_kb: int
    hwm_kb: int
    delta_kb: int
    cpu_seconds: float


class DaemonMemory:
    """Peak RSS of a long-lived daemon during one build: reset VmHWM, build, read VmHWM.

    `start()` returns False when the daemon's peak cannot be reset (then `stop()` returns None).
    Also samples CPU time (utime+stime of the daemon and its reaped children) across the build.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.rss_before = 0
        self.cpu_before = 0.0
        self.armed = False

    def _cpu(self) -> float:
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            ticks = sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
            return ticks / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            return 0.0

    def start(self) -> bool:
        try:
            with open(f"/proc/{self.pid}/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            self.armed = False
            return False
        self.rss_before = _status_kb(self.pid, "VmRSS")
        self.cpu_before = self._cpu()
        self.armed = True
        return True

    def stop(self) -> DaemonPeak | None:
        if not self.armed:
            return None
        hwm = _status_kb(self.pid, "VmHWM")
        return DaemonPeak(rss_before_kb=self.rss_before, hwm_kb=hwm,
                          delta_kb=max(0, hwm - self.rss_before), cpu_seconds=self._cpu() - self.cpu_before)
