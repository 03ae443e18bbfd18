"""COPY/ADD/WORKDIR: the file op's cache map and its run in the sandbox."""
from __future__ import annotations

from typing import Sequence

from builder.errors import PybuildError
from builder.sandbox.executor import Executor
from builder.solve.cache import CacheKey, CacheMap, op_digest
from builder.solve.graph import Vertex
from builder.solve.ops import Copy, FileOp
from builder.solve.results import Result, RootfsResult
from builder.solve.selection import Checksummer, Selection, input_deps, step_sources


def file_op(v: Vertex) -> FileOp:
    if not isinstance(v.op, FileOp):
        raise PybuildError(f"{v.name}: not a file op")
    return v.op


def _copies(op: FileOp) -> list[Copy]:
    return [a for a in op.actions if isinstance(a, Copy)]


class FileRunner:
    """Keys: the actions, the parent's key, and for every copy from a directory input the content
    hash of what it selects (its --exclude patterns and symlink-following included)."""

    announce = False

    def __init__(self, *, executor: Executor, checksum: Checksummer) -> None:
        self._executor = executor
        self._checksum = checksum

    def cache_map(self, v: Vertex, inputs: Sequence[Result]) -> CacheMap:
        op = file_op(v)
        sels: dict[int, list[Selection]] = {}
        for a in _copies(op):
            sels.setdefault(a.src, []).append(
                Selection(paths=a.src_paths, excludes=a.exclude, follow_symlinks=a.follow_symlinks))
        return CacheMap(digest=op_digest(op.op_json()), deps=input_deps(inputs, sels, self._checksum))

    def run(self, v: Vertex, inputs: Sequence[Result], key: CacheKey | None) -> Result:
        op = file_op(v)
        base = inputs[0]
        if not isinstance(base, RootfsResult) or key is None:
            raise PybuildError(f"{v.name}: a file op needs a root filesystem and a cache key")
        read = {a.src for a in _copies(op)}
        layer = self._executor.run_file(base=base.chain, op=op, sources=step_sources(inputs, read))
        return RootfsResult(key=key, chain=base.chain + ((layer,) if layer else ()))
