"""The sandbox worker: one long-lived process per build inside a user + mount namespace.

Started by `builder.sandbox.client.Worker`. Start-up: the worker unshares
CLONE_NEWUSER|CLONE_NEWNS and writes b"U\\n" on stdout; the parent writes the id maps and
answers b"M\\n" on stdin. Then the typed conversation of `builder.sandbox.protocol`: a `Config`,
then requests, each handled in its own thread by the operations (`exec_step.run_exec`,
`steps.run_file`, `steps.export_rootfs`) over a `Workspace`. Any byte on the cancel fd kills
every running step (later ones fail with BuildCancelled); EOF on stdin kills running steps,
removes the temp dirs and ends the worker.

This module imports only the standard library and `builder.sandbox.linux` (stdlib-only): the
worker enters its namespace at once, and the parent writes the id maps while the worker imports
the rest (`builder.sandbox.serve`). Nothing starts a thread before the namespace is entered
(unshare(CLONE_NEWUSER) needs a single-threaded process).
"""
from __future__ import annotations

import os
import sys
from typing import BinaryIO

from builder.sandbox import linux


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


def main() -> None:
    inp = os.fdopen(0, "rb", buffering=0)
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)   # stray prints go to the log, never into the protocol
    _enter_namespace(inp, out)
    from builder.sandbox.serve import serve
    serve(inp, out)
