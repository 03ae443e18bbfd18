"""What the solver needs from a sandbox: `Executor`, the surface of
`builder.sandbox.client.Worker` (the solver types against this, tests can fake it)."""
from __future__ import annotations

from pathlib import Path
from typing import BinaryIO, Callable, Mapping, Protocol

from builder.image.view import Chain, LayerRef, Source
from builder.solve.ops import ExecOp, FileOp


class Executor(Protocol):
    """Runs build steps over snapshots of layer chains. Every method may be called from several
    threads at once; `cancel()` from a signal handler."""

    @property
    def snapshotter_name(self) -> str:
        """"overlay" or "native", once started."""
        ...

    def run_exec(self, *, base: Chain, op: ExecOp, mount_sources: Mapping[int, Source],
                 secrets: Mapping[str, bytes], output: Callable[[bytes], None] | None = None) -> LayerRef | None:
        """Run `op` over `base`, its output streamed to `output`; the new layer, None when the step
        changed nothing. Raises ExecError on a non-zero exit, IdMappingError for unmapped ids,
        BuildCancelled after `cancel()`."""
        ...

    def run_file(self, *, base: Chain, op: FileOp, sources: Mapping[int, Source]) -> LayerRef | None:
        """Apply a file op over `base` (sources by Copy.src); the new layer or None."""
        ...

    def export_rootfs(self, *, chain: Chain, dest_dir: Path | None = None, dest_tar: BinaryIO | None = None,
                      dest_tar_path: Path | None = None) -> None:
        """Write the merged root of `chain` into a directory and/or as a tar (stream or file)."""
        ...

    def cancel(self) -> None:
        """Kill every running step; later calls fail with BuildCancelled."""
        ...

    def close(self) -> None:
        """Stop: running steps are killed, temp dirs removed. Idempotent."""
        ...
