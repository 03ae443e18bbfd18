"""The sandbox worker: one long-lived process per build inside a user + mount namespace.

Started by `builder.sandbox.client.Worker` with the parent's pid as its one argument. Start-up:
the worker opens a pidfd of that parent and checks it is still its parent (`_watch_parent`),
unshares CLONE_NEWUSER|CLONE_NEWNS and writes b"U\\n" on stdout; the parent writes the id maps
and answers b"M\\n" on stdin. Then the typed conversation of `builder.sandbox.protocol`: a
`Config`, then requests, each handled in its own thread by the operations (`exec_step.run_exec`,
`steps.run_file`, `steps.export_rootfs`) over a `Workspace`. Any byte on the cancel fd kills
every running step (later ones fail with BuildCancelled); EOF on stdin kills running steps,
removes the temp dirs and ends the worker.

Nothing outlives the build: when the parent process dies for any reason (SIGKILL included), a
thread watching the pidfd kills every step (the pid 1 of each step's pid namespace, which takes
the whole namespace with it) and the worker's process group (the worker, its step inits, and
everything they started that stayed in the group) at once, without clean-up: the next build's
start-up removes what was left (`clean_stale`). A pidfd is a process-level watch; the parent's
PR_SET_PDEATHSIG would not do here, as it fires when the parent *thread* that started the
worker ends (pybuild starts it from a short-lived thread). Without pidfds (Linux < 5.3) the
watch polls getppid().

This module imports only the standard library and `builder.sandbox.linux` (stdlib-only): the
worker enters its namespace at once, and the parent writes the id maps while the worker imports
the rest (`builder.sandbox.serve`). Nothing starts a thread before the namespace is entered
(unshare(CLONE_NEWUSER) needs a single-threaded process).
"""
from __future__ import annotations

import os
import select
import signal
import sys
import threading
import time
from typing import BinaryIO

from builder.sandbox import linux

POLL_S = 0.2        # the getppid() fallback's period


def _enter_namespace(inp: BinaryIO, out: BinaryIO) -> None:
    try:
        linux.unshare(linux.CLONE_NEWUSER | linux.CLONE_NEWNS)
    except OSError as e:
        sys.stderr.write(f"pybuild worker: unshare: {e}\n")
        sys.exit(3)
    out.write(b"U\n")
    out.flush()
    if inp.readline() != b"M\n":
        sys.exit(3)


def open_parent_watch(ppid: int) -> int:
    """A pidfd of `ppid` (-1 where pidfds are missing); exits at once when `ppid` is not (or
    no longer) this process's parent. The pidfd is opened first and the parent checked after,
    so a parent that died in between (its pid perhaps reused) is seen."""
    fd = -1
    try:
        fd = os.pidfd_open(ppid)
    except (AttributeError, OSError):
        fd = -1
    if os.getppid() != ppid:
        os._exit(3)
    return fd


def kill_everything() -> None:
    """SIGKILL every step (each step init's children: the pid 1 of a step's pid namespace),
    then the step inits and the worker's process group, the worker included. Does not return."""
    from builder.sandbox.initpool import children, kill_step
    me = os.getpid()
    for pid in children(me):
        kill_step(pid)
    if os.getpgrp() == me:
        os.killpg(me, signal.SIGKILL)
    os.kill(me, signal.SIGKILL)
    os._exit(137)


def _watch(pidfd: int, ppid: int) -> None:
    import builder.sandbox.initpool      # loaded now: the death path must not wait for an import
    assert callable(builder.sandbox.initpool.kill_step)
    if pidfd >= 0:
        p = select.poll()
        p.register(pidfd, select.POLLIN)
        while not p.poll():
            pass
    else:
        while os.getppid() == ppid:
            time.sleep(POLL_S)
    kill_everything()


def main() -> None:
    ppid = int(sys.argv[1]) if len(sys.argv) > 1 else os.getppid()
    pidfd = open_parent_watch(ppid)
    inp = os.fdopen(0, "rb", buffering=0)
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)   # stray prints go to the log, never into the protocol
    _enter_namespace(inp, out)
    threading.Thread(target=_watch, args=(pidfd, ppid), name="parent-watch", daemon=True).start()
    from builder.sandbox.serve import serve
    serve(inp, out)
