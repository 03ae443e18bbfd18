"""Step inits are started by the pool's one long-lived spawner thread: an init's
PR_SET_PDEATHSIG fires when the *thread* that started it ends, so an init started from a
short-lived thread (a request's, a refill's) would be killed mid-step, or escape its death
signal, at a moment nobody chose."""
from __future__ import annotations

import os
import sys
import threading
import time

from builder.sandbox.initpool import InitPool

# A stand-in init that, like nsinit, asks to die with its parent, then echoes its spec.
ARGV = (sys.executable, "-S", "-c",
        "import ctypes, sys; ctypes.CDLL(None).prctl(1, 9, 0, 0, 0); "
        "sys.stdout.buffer.write(sys.stdin.buffer.read())")


def test_init_with_a_death_signal_outlives_the_thread_that_took_it():
    pool = InitPool(ARGV)
    taken = []

    def step() -> None:                      # a request's thread: takes an init, lives a while
        taken.append(pool.take())
        time.sleep(0.5)                      # (the init has asked for its death signal by now)
    for _ in range(3):                       # the first without a spare, then spares
        t = threading.Thread(target=step)
        t.start()
        t.join()
    time.sleep(0.2)
    try:
        for init in taken:
            assert init.proc.poll() is None, "the init died with the thread that took it"
            init.proc.stdin.write(b"spec")
            init.proc.stdin.close()
            out = b""
            while chunk := os.read(init.out_r, 4096):
                out += chunk
            assert init.proc.wait(timeout=10) == 0 and out == b"spec"
            os.close(init.out_r)
            os.close(init.status_r)
    finally:
        pool.close()


def test_close_stops_the_spawner_and_fails_no_later_take():
    pool = InitPool(ARGV)
    pool.prime()
    pool.close()
    assert not any(t.name == "init-spawner" and t.is_alive() for t in threading.enumerate())
    init = pool.take()
    init.discard()
