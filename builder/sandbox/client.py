"""The rootless executor: the one place that starts namespaced processes.

`Worker` (a context manager) starts one long-lived worker process per build
(`builder.sandbox.server`) inside a new user + mount namespace, maps its ids (`builder.sandbox.userns`) and
sends it requests; each RUN step is a fresh `builder.sandbox.nsinit` process with its own pid, mount,
ipc and uts namespaces. All operations on snapshot contents happen inside the worker.

Thread safety: every public method may be called from several threads at once (the worker
handles requests concurrently); `cancel()` may be called from a signal handler.
"""
from __future__ import annotations

import itertools
import os
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO, BinaryIO, Callable, Literal, Mapping

from builder.errors import SandboxError
from builder.image.oci import Compression
from builder.image.view import Chain, LayerRef, Source
from builder.sandbox import protocol, userns
from builder.sandbox.protocol import (Chunk, Config, Done, ExportRootfs, Failure, LayerResult, Ready, Reply,
                                      Request, RunExec, RunFile, WireError)
from builder.solve.ops import ExecOp, FileOp
from builder.sandbox.executor import Executor
from builder.store.content import ContentStore

__all__ = ["SandboxOptions", "Worker", "nsinit_argv"]

_PKG_PARENT = str(Path(__file__).resolve().parent.parent.parent)


@dataclass(frozen=True, slots=True, kw_only=True)
class SandboxOptions:
    root: Path                          # pybuild root; snapshots (so/, sn/), cache-mounts/, w/ live here
    snapshotter: Literal["auto", "overlay", "native"] = "auto"
    compression: Compression = Compression.GZIP
    source_date_epoch: int | None = None
    step_memory: int | None = None      # bytes of memory a RUN step may use (needs a delegated cgroup v2)
    step_pids: int | None = None        # processes a RUN step may have at once (the same)
    step_log_limit: int | None = None   # bytes of a step's output passed on; the rest is clipped
    step_log_dir: Path | None = None    # where each RUN step's full output is written (step-<n>.log)
    max_layer_expansion: int | None = 1 << 30   # bytes a layer or ADD archive may unpack to (None: no cap)
    max_expansion_ratio: int = 100              # ... and times its compressed size (both must pass)
    relaxed: tuple[str, ...] = ()               # step protections waived (builder.sandbox.spec.PROTECTIONS)


def nsinit_argv() -> tuple[str, ...]:
    """How the worker starts a step's init: `builder.sandbox.nsinit` (stdlib-only, like all it
    imports) with the package parent on sys.path, without site: fast start-up."""
    boot = f"import sys; sys.path.insert(0, {_PKG_PARENT!r}); from builder.sandbox.nsinit import main; main()"
    return (sys.executable, "-S", "-E", "-c", boot)


def _worker_argv() -> tuple[str, ...]:
    boot = f"import sys; sys.path.insert(0, {_PKG_PARENT!r}); from builder.sandbox.server import main; main()"
    return (sys.executable, "-c", boot, str(os.getpid()))     # the worker watches this pid


class _Pending:
    __slots__ = ("event", "reply", "failure", "on_chunk")

    def __init__(self, on_chunk: Callable[[bytes], object] | None) -> None:
        self.event = threading.Event()
        self.reply: Reply | None = None
        self.failure: WireError | None = None
        self.on_chunk = on_chunk


class Worker:
    """The build's sandbox. `with Worker(store, options) as w: w.run_exec(...)`.

    `__enter__` starts the namespace worker (raises SandboxError if it cannot); `close()` kills
    running steps, stops the worker, which unmounts and removes its temp dirs."""

    def __init__(self, store: ContentStore, options: SandboxOptions) -> None:
        self.store = store
        self.options = options
        self.snapshotter_name = ""
        self._proc: subprocess.Popen[bytes] | None = None
        self._cancel_w = -1
        self._send_lock = threading.Lock()
        self._pending: dict[int, _Pending] = {}
        self._plock = threading.Lock()
        self._next_id = 1
        self._log: IO[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._dead: str | None = None
        self._log_names = itertools.count(1)

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> "Worker":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        root = Path(self.options.root)
        root.mkdir(parents=True, exist_ok=True)
        idmap, su, sg = userns.plan()
        cancel_r, self._cancel_w = os.pipe()
        self._log = tempfile.TemporaryFile()
        try:
            self._proc = subprocess.Popen(_worker_argv(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                          stderr=self._log, pass_fds=(cancel_r,), bufsize=0,
                                          start_new_session=True)   # terminal ^C reaches us, not steps
        finally:
            os.close(cancel_r)
        assert self._proc.stdin is not None and self._proc.stdout is not None
        try:
            if self._proc.stdout.readline() != b"U\n":
                raise SandboxError(f"sandbox worker could not create a user namespace: {self._log_tail()} "
                                   f"(run `pybuild doctor`: it names the setting that refuses it and the fix)")
            userns.apply(self._proc.pid, idmap, su, sg)
            self._proc.stdin.write(b"M\n")
            cfg = Config(
                root=str(root), store_root=str(self.store.root), snapshotter=self.options.snapshotter,
                compression=Compression(self.options.compression), source_date_epoch=self.options.source_date_epoch,
                idmap_size=idmap.size, setgroups=idmap.setgroups, user=idmap.user, nsinit_argv=nsinit_argv(),
                cancel_fd=cancel_r,     # the same number in the worker (pass_fds)
                step_memory=self.options.step_memory, step_pids=self.options.step_pids,
                max_layer_expansion=self.options.max_layer_expansion,
                max_expansion_ratio=self.options.max_expansion_ratio, relaxed=tuple(self.options.relaxed))
            protocol.write_message(self._proc.stdin, cfg)
            first = protocol.read_from_worker(self._proc.stdout)
        except BaseException:
            self.close()
            raise
        if isinstance(first, Failure):
            self.close()
            raise first.error.rebuild()
        if not isinstance(first, Ready):
            tail = self._log_tail()
            self.close()
            raise SandboxError(f"sandbox worker failed to start: {tail} (run `pybuild doctor` for what is missing)")
        self.snapshotter_name = first.snapshotter
        self._reader = threading.Thread(target=self._read_loop, name="pybuild-sandbox-reader", daemon=True)
        self._reader.start()

    def close(self) -> None:
        """Stop the worker: running steps are killed, temp dirs removed. Idempotent."""
        p, self._proc = self._proc, None
        if p is not None:
            try:
                assert p.stdin is not None
                p.stdin.close()
            except OSError:
                pass
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            if p.stdout is not None:
                p.stdout.close()
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join(timeout=5)
        if self._cancel_w >= 0:
            os.close(self._cancel_w)
            self._cancel_w = -1
        if self._log is not None:
            self._log.close()
            self._log = None

    def cancel(self) -> None:
        """Kill every running step now; later requests fail with BuildCancelled.
        Async-signal-safe enough for a Python signal handler (one os.write)."""
        try:
            os.write(self._cancel_w, b"c")
        except OSError:
            pass

    # ------------------------------------------------------------------ public operations
    def run_exec(self, *, base: Chain, op: ExecOp, mount_sources: Mapping[int, Source],
                 secrets: Mapping[str, bytes], output: Callable[[bytes], None] | None = None) -> LayerRef | None:
        """Run `op` over `base`; stream its stdout+stderr to `output`; return the new layer (its
        blob in the store, its snapshot installed) or None when the step changed nothing.
        Raises ExecError on a non-zero exit, IdMappingError when the user needs unmapped ids."""
        with _StepLog(output, self.options, self._log_names) as log:
            reply = self._call(lambda rid: RunExec(id=rid, base=tuple(base), op=op, mount_sources=dict(mount_sources),
                                                   secrets=dict(secrets), stream=log.wanted), log.write)
        return _layer(reply)

    def run_file(self, *, base: Chain, op: FileOp, sources: Mapping[int, Source]) -> LayerRef | None:
        """Apply a file op over `base` (sources: Copy.src → HostDir or ChainSource); the new layer
        or None when nothing changed."""
        return _layer(self._call(lambda rid: RunFile(id=rid, base=tuple(base), op=op, sources=dict(sources)), None))

    def export_rootfs(self, *, chain: Chain, dest_dir: Path | None = None, dest_tar: BinaryIO | None = None,
                      dest_tar_path: Path | None = None) -> None:
        """Write the merged root filesystem of `chain` into `dest_dir` (files owned by the
        invoking user) and/or as a deterministic tar (in-image owners) into `dest_tar` (a stream,
        not closed) or into the existing, empty file `dest_tar_path`, which the worker writes
        itself (no round trip through this process)."""
        sink: Callable[[bytes], object] | None = dest_tar.write if dest_tar is not None else None
        reply = self._call(lambda rid: ExportRootfs(
            id=rid, chain=tuple(chain), dest_dir=str(dest_dir) if dest_dir is not None else None,
            tar=dest_tar is not None, tar_path=str(dest_tar_path) if dest_tar_path is not None else None), sink)
        if not isinstance(reply, Done):
            raise protocol.ProtocolError(f"export_rootfs answered with a {type(reply).__name__}")

    # ------------------------------------------------------------------ plumbing
    def _call(self, make: Callable[[int], Request], on_chunk: Callable[[bytes], object] | None) -> Reply:
        p = self._proc
        if p is None or self._dead is not None:
            raise SandboxError(f"sandbox worker is not running{': ' + self._dead if self._dead else ''}")
        pend = _Pending(on_chunk)
        with self._plock:
            rid = self._next_id
            self._next_id += 1
            self._pending[rid] = pend
        try:
            with self._send_lock:
                assert p.stdin is not None
                protocol.write_message(p.stdin, make(rid))
        except OSError as e:
            with self._plock:
                self._pending.pop(rid, None)
            raise SandboxError(f"sandbox worker is gone: {e}") from e
        pend.event.wait()
        if pend.failure is not None:
            raise pend.failure.rebuild()
        assert pend.reply is not None
        return pend.reply

    def _read_loop(self) -> None:
        p = self._proc
        assert p is not None and p.stdout is not None
        out = p.stdout
        try:
            while True:
                msg = protocol.read_from_worker(out)
                if msg is None:
                    break
                self._dispatch(msg)
        except (OSError, EOFError, protocol.ProtocolError) as e:
            self._dead = f"protocol error: {e}"
        self._dead = self._dead or f"sandbox worker exited: {self._log_tail()}"
        with self._plock:
            pending, self._pending = self._pending, {}
        for pend in pending.values():
            pend.failure = WireError(kind="SandboxError", message=self._dead, location=None, fields={})
            pend.event.set()

    def _dispatch(self, msg: protocol.WorkerMessage) -> None:
        if isinstance(msg, Chunk):
            pend = self._pending.get(msg.id)
            if pend is not None and pend.on_chunk is not None:
                pend.on_chunk(msg.data)
            return
        if isinstance(msg, Ready):
            return
        if isinstance(msg, Failure) and msg.id == 0:      # the worker could not read a request
            self._dead = str(msg.error.rebuild())
            return
        with self._plock:
            pend = self._pending.pop(msg.id, None)
        if pend is None:
            return
        if isinstance(msg, Failure):
            pend.failure = msg.error
        else:
            pend.reply = msg
        pend.event.set()

    def _log_tail(self) -> str:
        if self._log is None:
            return ""
        try:
            self._log.seek(0, os.SEEK_END)
            n = self._log.tell()
            self._log.seek(max(0, n - 4000))
            return self._log.read().decode("utf-8", "replace").strip()
        except (OSError, ValueError):
            return ""


class _StepLog:
    """One RUN step's output on its way to the caller's `output`: every byte into
    `step_log_dir/step-<n>.log` when set, at most `step_log_limit` bytes passed on (then one
    "[output clipped ...]" line, naming the file), so that no step's log grows without bound in
    memory downstream."""

    def __init__(self, output: Callable[[bytes], None] | None, opts: SandboxOptions,
                 names: "itertools.count[int]") -> None:
        self.output, self.limit, self.passed, self.clipped = output, opts.step_log_limit, 0, False
        self.file: IO[bytes] | None = None
        self.path: Path | None = None
        if opts.step_log_dir is not None:
            self.path = Path(opts.step_log_dir) / f"step-{next(names)}.log"
            self.file = open(self.path, "wb")
        self.wanted = output is not None or self.file is not None

    def __enter__(self) -> "_StepLog":
        return self

    def __exit__(self, *exc: object) -> None:
        if self.file is not None:
            self.file.close()

    def write(self, data: bytes) -> None:
        if self.file is not None:
            self.file.write(data)
        if self.output is None or self.clipped:
            return
        if self.limit is not None and self.passed + len(data) > self.limit:
            self.output(data[: self.limit - self.passed])
            where = f"; the full log is in {self.path}" if self.path else ""
            self.output(f"\n[output clipped, log limit {self.limit} bytes reached{where}]\n".encode())
            self.clipped = True
            return
        self.passed += len(data)
        self.output(data)


def _layer(reply: Reply) -> LayerRef | None:
    if not isinstance(reply, LayerResult):
        raise protocol.ProtocolError(f"expected a layer, the worker answered with a {type(reply).__name__}")
    return reply.layer


def as_executor(worker: Worker) -> Executor:
    """A `Worker` is an `Executor` (mypy checks the structure here)."""
    return worker
