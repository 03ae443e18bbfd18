"""The sandbox worker's request loop, inside its namespace (entered by `builder.sandbox.server`):
the `Config`, then requests, each handled in its own thread by the operations
(`exec_step.run_exec`, `steps.run_file`, `steps.export_rootfs`) over a `Workspace`."""
from __future__ import annotations

import os
import sys
import threading
from typing import BinaryIO

from builder.errors import BuildCancelled, PybuildError
from builder.sandbox import protocol
from builder.sandbox.exec_step import run_exec
from builder.sandbox.protocol import (Config, Done, ExportRootfs, Failure, LayerResult, Ready, Request,
                                      RunExec, RunFile, WireError, WorkerMessage)
from builder.sandbox.steps import export_rootfs, run_file
from builder.sandbox.workspace import Workspace


def _failure(rid: int, e: BaseException) -> Failure:
    if not isinstance(e, PybuildError):
        sys.stderr.write(protocol.traceback_text(e))
    return Failure(id=rid, error=WireError.of(e))


def serve(inp: BinaryIO, out: BinaryIO) -> None:
    """Handle the config, then requests until EOF; every request runs in its own thread."""
    try:
        cfg = protocol.read_from_parent(inp)
    except protocol.ProtocolError as e:
        protocol.write_message(out, Failure(id=0, error=WireError.of(e)))
        return
    if not isinstance(cfg, Config):
        return
    lock = threading.Lock()

    def send(msg: WorkerMessage) -> None:
        with lock:
            protocol.write_message(out, msg)

    try:
        ws = Workspace(cfg, send)
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        send(_failure(0, e))
        return
    send(Ready(snapshotter=ws.snap.name))
    if cfg.cancel_fd >= 0:
        threading.Thread(target=_watch_cancel, args=(cfg.cancel_fd, ws), daemon=True).start()
    _serve_requests(inp, ws)


def _serve_requests(inp: BinaryIO, ws: Workspace) -> None:
    threads: list[threading.Thread] = []
    try:
        while True:
            try:
                msg = protocol.read_from_parent(inp)
            except protocol.ProtocolError as e:
                ws.send(Failure(id=0, error=WireError.of(e)))
                break
            if not isinstance(msg, (RunExec, RunFile, ExportRootfs)):
                break
            t = threading.Thread(target=handle, args=(ws, msg), daemon=True)
            t.start()
            threads = [x for x in threads if x.is_alive()] + [t]
    finally:
        ws.cancel()      # steps still running now are killed and report BuildCancelled
        for t in threads:
            t.join(timeout=10)
        ws.close()


def _watch_cancel(fd: int, ws: Workspace) -> None:
    while True:
        try:
            b = os.read(fd, 64)
        except OSError:
            return
        if not b:
            return
        ws.cancel()


def handle(ws: Workspace, req: Request) -> None:
    """Run one request; send its reply or its failure."""
    reply: LayerResult | Done
    try:
        if ws.cancelled:
            raise BuildCancelled("build cancelled")
        if isinstance(req, RunExec):
            reply = LayerResult(id=req.id, layer=run_exec(ws, req))
        elif isinstance(req, RunFile):
            reply = LayerResult(id=req.id, layer=run_file(ws, req))
        else:
            export_rootfs(ws, req)
            reply = Done(id=req.id)
    except BaseException as e:  # noqa: BLE001 - every failure goes back to the parent
        if ws.cancelled and not isinstance(e, BuildCancelled):
            e = BuildCancelled("build cancelled")
        ws.send(_failure(req.id, e))
        return
    ws.send(reply)
