"""The executor contract the solver's runners use: run steps and read root filesystems."""
from __future__ import annotations

from pathlib import Path
from typing import BinaryIO, Callable, Mapping, Protocol

from builder.image.view import Chain, LayerRef, Source
from builder.solve.ops import ExecOp, FileOp


class Executor(Protocol):
    def run_exec(self, *, base: Chain, op: ExecOp, mount_sources: Mapping[int, Source],
                 secrets: Mapping[str, bytes], output: Callable[[bytes], None] | None = None) -> LayerRef | None: ...

    def run_file(self, *, base: Chain, op: FileOp, sources: Mapping[int, Source]) -> LayerRef | None: ...

    def export_rootfs(self, *, chain: Chain, dest_dir: Path | None = None, dest_tar: BinaryIO | None = None,
                      dest_tar_path: Path | None = None) -> None: ...

    def cancel(self) -> None: ...
