"""Read-only views the worker's operations mount or read: a chain's merged root, a step's
sources (host directories or other chains), a step's private temp dir, and the stream that sends
bytes back to the parent.
"""
from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

from builder.errors import SandboxError
from builder.image.view import Chain, ChainSource, HostDir, Source
from builder.sandbox import linux
from builder.sandbox.context import StepContext
from builder.sandbox.protocol import Chunk
from builder.store.snapshot import remove_tree


class ChunkSink:
    """A write-only stream that forwards bytes to the parent as `Chunk`s of about 1 MiB."""

    def __init__(self, ctx: StepContext, rid: int) -> None:
        self.ctx, self.rid, self.buf = ctx, rid, bytearray()

    def write(self, b: bytes) -> int:
        self.buf += b
        if len(self.buf) >= 1 << 20:
            self.flush()
        return len(b)

    def flush(self) -> None:
        if self.buf:
            self.ctx.send(Chunk(id=self.rid, data=bytes(self.buf)))
            self.buf.clear()


def step_dir(ctx: StepContext, stack: contextlib.ExitStack) -> Path:
    """A fresh private directory for one operation, removed when `stack` closes."""
    d = Path(tempfile.mkdtemp(dir=ctx.tmp, prefix="s"))
    stack.callback(remove_tree, d)
    return d


def mount_view(ctx: StepContext, chain: Chain, where: Path, stack: contextlib.ExitStack) -> str:
    """A read-only merged view of `chain` in the worker's mount namespace; returns its path."""
    spec = ctx.snap.view(chain)
    if spec.type == "bind":
        return spec.path
    where.mkdir(parents=True, exist_ok=True)
    linux.mount("overlay", str(where), "overlay", linux.MS_RDONLY, linux.overlay_options(list(spec.lower), None, None))
    stack.callback(linux.umount, str(where), linux.MNT_DETACH)
    return str(where)


def source_path(ctx: StepContext, src: Source, where: Path, stack: contextlib.ExitStack) -> tuple[str, tuple[str, ...]]:
    """(host path, .dockerignore excludes) of a step's source; a chain is mounted at `where`."""
    if isinstance(src, HostDir):
        return str(src.path), tuple(src.excludes)
    if isinstance(src, ChainSource):
        return mount_view(ctx, src.chain, where, stack), ()
    raise SandboxError(f"unknown source {src!r}")
