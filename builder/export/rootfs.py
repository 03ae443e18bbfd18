"""Root filesystem outputs (`-o type=tar`, `-o type=local`): written by the executor, the one
process that can read snapshot contents (they belong to ids mapped in the build's namespace)."""
from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

from builder.image.view import Chain
from builder.sandbox.executor import Executor
from builder.store.content import atomic_output_path


def write_rootfs_tar(executor: Executor, chain: Chain, dest: str, stdout: BinaryIO | None) -> None:
    """The merged root filesystem as a deterministic tar into `dest` ("-": `stdout`), written
    through a temp file renamed into place."""
    if dest == "-":
        executor.export_rootfs(chain=chain, dest_tar=stdout)
        return
    with atomic_output_path(Path(dest)) as tmp:
        executor.export_rootfs(chain=chain, dest_tar_path=tmp)


def write_rootfs_dir(executor: Executor, chain: Chain, dest: str) -> None:
    """The merged root filesystem merged into the folder `dest` (created if missing)."""
    executor.export_rootfs(chain=chain, dest_dir=Path(dest))
