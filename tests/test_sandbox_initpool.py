"""Step inits started ahead: a spare is taken by the next step and replaced; close kills it."""
from __future__ import annotations

import sys
import time

from builder.sandbox.initpool import InitPool

# A stand-in init: reads its spec from stdin to EOF and echoes it (as nsinit reads a StepSpec).
ARGV = (sys.executable, "-S", "-c", "import sys; sys.stdout.buffer.write(sys.stdin.buffer.read())")


def _run(init, data: bytes) -> bytes:
    import os
    init.proc.stdin.write(data)
    init.proc.stdin.close()
    out = b""
    while chunk := os.read(init.out_r, 4096):
        out += chunk
    init.proc.wait()
    os.close(init.out_r)
    os.close(init.status_r)
    return out


def _wait_for_spare(pool: InitPool) -> None:
    deadline = time.monotonic() + 10
    while pool._spare is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert pool._spare is not None, "a spare is started after a take"


def test_take_then_the_spare_serves_the_next_step():
    pool = InitPool(ARGV)
    first = pool.take()
    assert _run(first, b"one") == b"one"
    _wait_for_spare(pool)
    spare = pool._spare
    second = pool.take()
    assert second is spare and _run(second, b"two") == b"two"
    pool.close()


def test_close_kills_the_spare_and_later_takes_keep_none():
    pool = InitPool(ARGV)
    _run(pool.take(), b"x")
    _wait_for_spare(pool)
    spare = pool._spare
    pool.close()
    assert spare.proc.wait(timeout=10) is not None
    late = pool.take()
    assert _run(late, b"late") == b"late"
    time.sleep(0.2)
    assert pool._spare is None


def test_a_dead_spare_is_replaced():
    pool = InitPool(ARGV)
    _run(pool.take(), b"x")
    _wait_for_spare(pool)
    pool._spare.proc.kill()
    pool._spare.proc.wait()
    assert _run(pool.take(), b"fresh") == b"fresh"
    pool.close()
