"""The worker's file operations: `run_file` (COPY/ADD/mkdir/mkfile over a writable snapshot,
committed as a layer) and `export_rootfs` (a chain's merged root as a directory and/or a
deterministic tar). RUN steps are in `builder.sandbox.exec_step`.
"""
from __future__ import annotations

import contextlib
import errno
from pathlib import Path
from typing import BinaryIO

from builder.errors import IdMappingError
from builder.image.oci import Compression
from builder.image.view import HostDir, LayerRef
from builder.layer.diff import tree_changes
from builder.layer.tar import write_layer
from builder.sandbox import linux
from builder.sandbox.commit import finish_layer
from builder.sandbox.context import StepContext
from builder.sandbox.fileop import SourceDir, apply_file_op
from builder.sandbox.protocol import ExportRootfs, RunFile
from builder.sandbox.userns import unmapped_reason
from builder.sandbox.views import ChunkSink, mount_view, source_path, step_dir
from builder.store.snapshot import copy_tree


def run_file(ctx: StepContext, req: RunFile) -> LayerRef | None:
    """Apply `req.op` over `req.base`; the new layer, or None when nothing changed."""
    active = ctx.snap.prepare(req.base)
    try:
        with contextlib.ExitStack() as stack:
            sd = step_dir(ctx, stack)
            srcs = {}
            for i, src in req.sources.items():
                path, excludes = source_path(ctx, src, sd / f"v{i}", stack)
                srcs[i] = SourceDir(path=Path(path), excludes=excludes, reset_owner=isinstance(src, HostDir))
            root = active.fs
            if active.rootfs.type == "overlay":
                root = sd / "m"
                root.mkdir()
                rf = active.rootfs
                linux.mount("overlay", str(root), "overlay", 0, linux.overlay_options(list(rf.lower), rf.upper, rf.work))
                stack.callback(linux.umount, str(root), 0)
            try:
                apply_file_op(root, req.op, srcs, limit=ctx.snap.limit)
            except OSError as e:
                if e.errno == errno.EINVAL and ctx.cfg.idmap_size == 1:
                    raise IdMappingError(f"file operation failed ({e}): {unmapped_reason(ctx.idmap())}") from e
                raise
        return finish_layer(ctx, active)
    except BaseException:
        ctx.snap.abort(active)
        raise


def export_rootfs(ctx: StepContext, req: ExportRootfs) -> None:
    """Copy the merged root of `req.chain` to `req.dest_dir` (owned by the invoking user) and/or
    write it as a tar with in-image owners: into `req.tar_path` (a file the parent made for us,
    written directly: the worker's root is the invoking user outside) or back to the parent as
    Chunks (`req.tar`)."""
    with contextlib.ExitStack() as stack:
        sd = step_dir(ctx, stack)
        root = Path(mount_view(ctx, req.chain, sd / "v", stack))
        if req.dest_dir is not None:
            copy_tree(root, Path(req.dest_dir), owners=False, exist_ok=True)
        if req.tar or req.tar_path:
            (sd / "e").mkdir()
            with contextlib.ExitStack() as out:
                sink: BinaryIO | ChunkSink = (out.enter_context(open(req.tar_path, "r+b")) if req.tar_path
                                              else ChunkSink(ctx, req.id))
                write_layer(root, tree_changes(sd / "e", root), sink,  # type: ignore[arg-type]
                            compression=Compression.UNCOMPRESSED, source_date_epoch=ctx.cfg.source_date_epoch)
                sink.flush()
