"""Step inits started ahead of time.

A RUN step's init is a fresh interpreter (`builder.sandbox.nsinit`); its start-up and imports
cost ~20 ms. The worker keeps one init started ahead (a spare), waiting for its `StepSpec` on
stdin, and starts the next spare in the background as soon as one is taken, so that this cost
overlaps the previous step instead of adding to every step. A spare does nothing step-specific
before it reads its spec (the namespaces are entered after), so any step can take it. A spare
left when the worker stops is killed; if the worker dies, the spare reads EOF and exits.
"""
from __future__ import annotations

import os
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
    """One spare init for `argv`. Thread-safe."""

    def __init__(self, argv: tuple[str, ...]) -> None:
        self._argv = argv
        self._lock = threading.Lock()
        self._spare: StartedInit | None = None
        self._closed = False

    def prime(self) -> None:
        """Start the first spare in the background (the first step then finds it warm)."""
        threading.Thread(target=self._refill, name="init-spare", daemon=True).start()

    def take(self) -> StartedInit:
        """A started init: the spare when there is a live one, else a new one; either way the
        next spare starts in the background."""
        with self._lock:
            spare, self._spare = self._spare, None
            closed = self._closed
        if spare is not None and spare.proc.poll() is not None:
            spare.discard()
            spare = None
        if not closed:
            threading.Thread(target=self._refill, name="init-spare", daemon=True).start()
        return spare if spare is not None else start_init(self._argv)

    def _refill(self) -> None:
        try:
            new = start_init(self._argv)
        except OSError:
            return                       # the next take starts one itself and reports the error
        with self._lock:
            keep = not self._closed and self._spare is None
            if keep:
                self._spare = new
        if not keep:
            new.discard()

    def close(self) -> None:
        """Kill the spare; later takes start inits without keeping spares."""
        with self._lock:
            self._closed = True
            spare, self._spare = self._spare, None
        if spare is not None:
            spare.discard()
