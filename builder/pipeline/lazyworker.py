"""The namespace worker, started in the background or on first use; a build that never uses it
only pays for closing it."""
from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import BinaryIO, Callable, ContextManager, Mapping

from builder.errors import SandboxError
from builder.image.view import Chain, LayerRef, Source
from builder.sandbox.client import Worker
from builder.solve.ops import ExecOp, FileOp


class LazyWorker:
    """An Executor that starts the real `Worker` (from `factory`) on first use or `prestart()`."""

    def __init__(self, factory: Callable[[], ContextManager[Worker]]) -> None:
        self._factory = factory
        self._worker: Worker | None = None
        self._closed = False
        self._lock = threading.Lock()
        self._stack = contextlib.ExitStack()

    def _get(self) -> Worker:
        with self._lock:
            if self._closed:     # a prestart that lost the race with a fast failure starts nothing
                raise SandboxError("the build is over: the sandbox worker is closed")
            if self._worker is None:
                self._worker = self._stack.enter_context(self._factory())
            return self._worker

    def prestart(self) -> None:
        """Start the worker in the background (its start-up then overlaps parsing, resolving and
        cache checks). A failure here is not reported: the first real use retries and raises."""
        def start() -> None:
            try:
                self._get()
            except Exception:  # noqa: BLE001 - reported by the first real use
                pass
        threading.Thread(target=start, name="worker-prestart", daemon=True).start()

    @property
    def snapshotter_name(self) -> str:
        """"overlay" or "native" once the worker runs; "" before."""
        w = self._worker
        return w.snapshotter_name if w is not None else ""

    def run_exec(self, *, base: Chain, op: ExecOp, mount_sources: Mapping[int, Source],
                 secrets: Mapping[str, bytes], output: Callable[[bytes], None] | None = None) -> LayerRef | None:
        return self._get().run_exec(base=base, op=op, mount_sources=mount_sources, secrets=secrets, output=output)

    def run_file(self, *, base: Chain, op: FileOp, sources: Mapping[int, Source]) -> LayerRef | None:
        return self._get().run_file(base=base, op=op, sources=sources)

    def export_rootfs(self, *, chain: Chain, dest_dir: Path | None = None, dest_tar: BinaryIO | None = None,
                      dest_tar_path: Path | None = None) -> None:
        self._get().export_rootfs(chain=chain, dest_dir=dest_dir, dest_tar=dest_tar, dest_tar_path=dest_tar_path)

    def cancel(self) -> None:
        w = self._worker
        if w is not None:
            w.cancel()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._stack.close()
