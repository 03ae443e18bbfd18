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
from builder.store.snapshot import copy_tree, remove_tree


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


def step_view(ctx: StepContext, chain: Chain, where: Path, stack: contextlib.ExitStack) -> str:
    """A read-only view of `chain` that belongs to one step and is never the stored snapshot
    itself: a step that remounts its bind read-write (CAP_SYS_ADMIN in its namespace allows
    that) must not change what later steps and builds see. The overlay snapshotter's view is a
    fresh overlay without an upper dir (its superblock refuses a read-write remount). The copying
    snapshotter's stored tree gets the same: a read-only overlay over it, mounted for this step,
    or (where overlay cannot be mounted, or the path cannot be written in its options) a private
    copy, thrown away with the step."""
    spec = ctx.snap.view(chain)
    if spec.type == "overlay":
        return mount_view(ctx, chain, where, stack)
    if not any(c in spec.path for c in ",:\\"):
        empty = where.with_name(where.name + "-e")
        where.mkdir(parents=True, exist_ok=True)
        empty.mkdir(exist_ok=True)
        try:
            linux.mount("overlay", str(where), "overlay", linux.MS_RDONLY,
                        linux.overlay_options([spec.path, str(empty)], None, None))
        except OSError:
            where.rmdir()
        else:
            stack.callback(linux.umount, str(where), linux.MNT_DETACH)
            return str(where)
    copy_tree(Path(spec.path), where)
    return str(where)


def source_path(ctx: StepContext, src: Source, where: Path, stack: contextlib.ExitStack) -> tuple[str, tuple[str, ...]]:
    """(host path, .dockerignore excludes) of a step's source; a chain is mounted at `where`."""
    if isinstance(src, HostDir):
        return str(src.path), tuple(src.excludes)
    if isinstance(src, ChainSource):
        return mount_view(ctx, src.chain, where, stack), ()
    raise SandboxError(f"unknown source {src!r}")
