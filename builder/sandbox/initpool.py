"""Step inits started ahead of time.

A RUN step's init is a fresh interpreter (`builder.sandbox.nsinit`); its start-up and imports
cost ~20 ms. The worker keeps one init started ahead (a spare), waiting for its `StepSpec` on
stdin, and starts the next spare in the background as soon as one is taken, so that this cost
overlaps the previous step instead of adding to every step. A spare does nothing step-specific
before it reads its spec (the namespaces are entered after), so any step can take it. A spare
left when the worker stops is killed; if the worker dies, the spare reads EOF and exits.

Every init is started from the pool's one spawner thread, which lives as long as the pool: an
init's PR_SET_PDEATHSIG (set by the init itself) fires when the *thread* that started it ends,
so an init started from a short-lived thread would be killed, or left without a death signal,
at a moment nobody chose. The spawner ends at `close()`, when every step is being killed anyway.
"""
from __future__ import annotations

import os
import signal
import subprocess
import threading
from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class StartedInit:
    """A started init: write its spec to `proc.stdin`; its output arrives on `out_r`, its status
    lines on `status_r` (the child writes them to its fd `child_status_fd`). The taker owns it."""
    proc: subprocess.Popen[bytes]
    out_r: int
    status_r: int
    child_status_fd: int

    def discard(self) -> None:
        """Kill it and close our ends (for a spare nobody took)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        os.close(self.out_r)
        os.close(self.status_r)


def children(pid: int) -> list[int]:
    """The child processes of `pid` (every thread's), from /proc; [] when it is gone."""
    out: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out.extend(int(x) for x in f.read().split())
        except (OSError, ValueError):
            pass
    return out


def kill_step(pid: int) -> None:
    """SIGKILL a step: the children of its init `pid` first (the pid 1 of the step's pid
    namespace, whose death kills every process in it, even one that exec'd a set-id program and
    so lost its parent-death signal), then the init."""
    for c in children(pid) + [pid]:
        try:
            os.kill(c, signal.SIGKILL)
        except OSError:
            pass


def start_init(argv: tuple[str, ...]) -> StartedInit:
    r_out, w_out = os.pipe()
    r_st, w_st = os.pipe()
    try:
        p = subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=w_out, stderr=w_out,
                             pass_fds=(w_st,), close_fds=True)
    except BaseException:
        os.close(r_out)
        os.close(r_st)
        raise
    finally:
        os.close(w_out)
        os.close(w_st)
    return StartedInit(proc=p, out_r=r_out, status_r=r_st, child_status_fd=w_st)


class InitPool:
    """One spare init for `argv`, every init started by one spawner thread. Thread-safe."""

    def __init__(self, argv: tuple[str, ...]) -> None:
        self._argv = argv
        self._cond = threading.Condition()
        self._spare: StartedInit | None = None
        self._wanted: list[_Order] = []       # inits asked for by `take()`, served first
        self._refill = False
        self._closed = False
        self._thread: threading.Thread | None = None

    def prime(self) -> None:
        """Start the spawner and the first spare (the first step then finds it warm)."""
        with self._cond:
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._spawner, name="init-spawner", daemon=True)
                self._thread.start()
            self._refill = True
            self._cond.notify_all()

    def take(self) -> StartedInit:
        """A started init: the spare when there is a live one, else a new one (started by the
        spawner); either way the next spare is started in the background. After `close()` an
        init is started by the caller and no spare is kept. Raises OSError when no init can be
        started."""
        if self._closed:
            return start_init(self._argv)
        if self._thread is None:
            self.prime()
        with self._cond:
            spare, self._spare = self._spare, None
            self._refill = True
            self._cond.notify_all()
        if spare is not None and spare.proc.poll() is None:
            return spare
        if spare is not None:
            spare.discard()
        order = _Order()
        with self._cond:
            if self._closed:
                return start_init(self._argv)
            self._wanted.append(order)
            self._cond.notify_all()
        order.done.wait()
        if order.error is not None:
            raise order.error
        assert order.init is not None
        return order.init

    def _spawner(self) -> None:
        while True:
            with self._cond:
                while not (self._closed or self._wanted or (self._refill and self._spare is None)):
                    self._cond.wait()
                if self._closed:
                    orders, self._wanted = self._wanted, []
                    break
                order = self._wanted.pop(0) if self._wanted else None
                if order is None:
                    self._refill = False
            if order is not None:
                order.fill(self._argv)
                continue
            try:
                new = start_init(self._argv)
            except Exception:  # noqa: BLE001 - the next take starts one itself and reports the error
                continue
            with self._cond:
                keep = not self._closed and self._spare is None
                if keep:
                    self._spare = new
            if not keep:
                new.discard()
        for o in orders:
            o.fail(OSError("the step init pool is closed"))

    def close(self) -> None:
        """Kill the spare and stop the spawner; later takes start inits without keeping spares."""
        with self._cond:
            self._closed = True
            spare, self._spare = self._spare, None
            self._cond.notify_all()
        if spare is not None:
            spare.discard()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout=10)


class _Order:
    """One init asked for by `take()`, started by the spawner."""
    __slots__ = ("done", "init", "error")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.init: StartedInit | None = None
        self.error: Exception | None = None

    def fill(self, argv: tuple[str, ...]) -> None:
        try:
            self.init = start_init(argv)
        except Exception as e:  # noqa: BLE001 - raised in the taker's thread
            self.error = e
        self.done.set()

    def fail(self, e: OSError) -> None:
        self.error = e
        self.done.set()
