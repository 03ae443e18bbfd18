"""The wire between `builder.sandbox.client.Worker` and the worker process (`builder.sandbox.server`).

Frames are a 4-byte big-endian length and the pickle of one message dataclass below (the parent
is trusted: it started the worker). Every message carries `version`; `read_message` accepts only
the message types the reader expects, of this `PROTOCOL_VERSION`, with fields of the right
types, and raises ProtocolError otherwise (a version mismatch says so).

Conversation:
1. parent → `Config`; worker → `Ready` (the snapshotter's name) or `Failure(id=0)`.
2. parent → requests (`RunExec`, `RunFile`, `ExportRootfs`; handled concurrently); worker →
   `Chunk`s (step output, tar bytes) then exactly one `LayerResult` (run_exec/run_file),
   `Done` (export_rootfs) or `Failure` per request id.

Errors cross as `WireError` (class name, message, location, `fields()`) and are re-created as
the same `PybuildError` subclass with the same fields by `WireError.rebuild()`.
"""
from __future__ import annotations

import pickle
import struct
import traceback
from dataclasses import dataclass
from typing import IO, Union

from builder import errors
from builder.image.oci import Compression
from builder.image.view import ChainSource, HostDir, LayerRef, Source
from builder.solve.ops import ExecOp, FileOp

PROTOCOL_VERSION = 1


class ProtocolError(errors.SandboxError):
    """A frame that is not a message this side expects (wrong type, version or fields)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """The worker's settings (its root, the content store, the snapshotter wanted, layer
    compression, the id map it runs under and how to start a step's init)."""
    version: int = PROTOCOL_VERSION
    root: str
    store_root: str
    snapshotter: str
    compression: Compression
    source_date_epoch: int | None
    idmap_size: int
    setgroups: bool
    user: str
    nsinit_argv: tuple[str, ...]
    cancel_fd: int = -1         # the worker's end of the cancel pipe (-1: none)
    step_memory: int | None = None      # per-step memory limit in bytes (a delegated cgroup v2)
    step_pids: int | None = None        # per-step process limit (a delegated cgroup v2)
    max_layer_expansion: int | None = 1 << 30   # bytes a layer or ADD archive may unpack to (None: no cap)
    max_expansion_ratio: int = 100              # ... and times its compressed size (both must pass)
    relaxed: tuple[str, ...] = ()               # step protections the user waived (spec.PROTECTIONS)


@dataclass(frozen=True, slots=True, kw_only=True)
class Ready:
    version: int = PROTOCOL_VERSION
    snapshotter: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RunExec:
    """Run `op` over `base`; `stream`: send the step's output as Chunks."""
    version: int = PROTOCOL_VERSION
    id: int
    base: tuple[LayerRef, ...]
    op: ExecOp
    mount_sources: dict[int, Source]
    secrets: dict[str, bytes]
    stream: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class RunFile:
    version: int = PROTOCOL_VERSION
    id: int
    base: tuple[LayerRef, ...]
    op: FileOp
    sources: dict[int, Source]


@dataclass(frozen=True, slots=True, kw_only=True)
class ExportRootfs:
    """Export `chain` into `dest_dir`, and/or as a tar: into the existing file `tar_path`, or as
    Chunks when `tar` is set."""
    version: int = PROTOCOL_VERSION
    id: int
    chain: tuple[LayerRef, ...]
    dest_dir: str | None
    tar: bool
    tar_path: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class LayerResult:
    """The new layer of a run_exec/run_file, None when the step changed nothing."""
    version: int = PROTOCOL_VERSION
    id: int
    layer: LayerRef | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Done:
    version: int = PROTOCOL_VERSION
    id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Chunk:
    version: int = PROTOCOL_VERSION
    id: int
    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class WireError:
    """A PybuildError in transit: `kind` is its class name in builder.errors."""
    kind: str
    message: str
    location: str | None
    fields: dict[str, errors.FieldValue]

    @classmethod
    def of(cls, e: BaseException) -> "WireError":
        """The wire form of `e`; an exception that is not a PybuildError becomes a SandboxError
        naming its type (its traceback is what the worker's log shows)."""
        if isinstance(e, errors.PybuildError):
            return cls(kind=type(e).__name__, message=e.message, location=e.location, fields=e.fields())
        return cls(kind="SandboxError", message=f"sandbox worker: {type(e).__name__}: {e}", location=None,
                   fields={})

    def rebuild(self) -> errors.PybuildError:
        return errors.rebuild(self.kind, self.message, self.location, dict(self.fields))


@dataclass(frozen=True, slots=True, kw_only=True)
class Failure:
    version: int = PROTOCOL_VERSION
    id: int
    error: WireError


Request = Union[RunExec, RunFile, ExportRootfs]
Reply = Union[LayerResult, Done]
WorkerMessage = Union[Ready, Chunk, LayerResult, Done, Failure]
ParentMessage = Union[Config, RunExec, RunFile, ExportRootfs]
REQUESTS = (RunExec, RunFile, ExportRootfs)
WORKER_MESSAGES = (Ready, Chunk, LayerResult, Done, Failure)


def traceback_text(e: BaseException) -> str:
    return "".join(traceback.format_exception(e))


# ---------------------------------------------------------------------- validation

_Type = Union[type, tuple[type, ...]]
_SOURCE = (HostDir, ChainSource)
_FIELD_TYPES: dict[type, dict[str, _Type]] = {
    Config: {"root": str, "store_root": str, "snapshotter": str, "compression": Compression,
             "source_date_epoch": (int, type(None)), "idmap_size": int, "setgroups": bool, "user": str,
             "nsinit_argv": tuple, "cancel_fd": int, "step_memory": (int, type(None)),
             "step_pids": (int, type(None)), "max_layer_expansion": (int, type(None)),
             "max_expansion_ratio": int, "relaxed": tuple},
    Ready: {"snapshotter": str},
    RunExec: {"id": int, "base": tuple, "op": ExecOp, "mount_sources": dict, "secrets": dict, "stream": bool},
    RunFile: {"id": int, "base": tuple, "op": FileOp, "sources": dict},
    ExportRootfs: {"id": int, "chain": tuple, "dest_dir": (str, type(None)), "tar": bool,
                   "tar_path": (str, type(None))},
    LayerResult: {"id": int, "layer": (LayerRef, type(None))},
    Done: {"id": int},
    Chunk: {"id": int, "data": bytes},
    Failure: {"id": int, "error": WireError},
}


def _check_items(msg: object) -> None:
    """The contents of the containers of `msg` (tuples of layers, maps of sources, secrets)."""
    chains = [getattr(msg, n) for n in ("base", "chain") if hasattr(msg, n)]
    if not all(isinstance(x, LayerRef) for c in chains for x in c):
        raise ProtocolError(f"{type(msg).__name__}: a chain holds something else than layers")
    for n in ("mount_sources", "sources"):
        m = getattr(msg, n, {})
        if not all(isinstance(k, int) and isinstance(v, _SOURCE) for k, v in m.items()):
            raise ProtocolError(f"{type(msg).__name__}.{n}: not a map of input index to source")
    if isinstance(msg, RunExec) and not all(isinstance(k, str) and isinstance(v, bytes)
                                            for k, v in msg.secrets.items()):
        raise ProtocolError("RunExec.secrets: not a map of id to bytes")
    if isinstance(msg, Failure) and not (isinstance(msg.error.kind, str) and isinstance(msg.error.message, str)
                                         and isinstance(msg.error.fields, dict)):
        raise ProtocolError("Failure.error: malformed")


def validate(msg: object, expected: tuple[type, ...]) -> None:
    """Raise ProtocolError unless `msg` is one of `expected`, of this version, well-typed."""
    if not isinstance(msg, expected):
        raise ProtocolError(f"unexpected sandbox message {type(msg).__name__}; expected one of "
                            f"{', '.join(t.__name__ for t in expected)}")
    version = getattr(msg, "version", None)
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"sandbox protocol version mismatch: got a {type(msg).__name__} of version "
                            f"{version}, this side speaks version {PROTOCOL_VERSION} (client and worker "
                            f"must come from the same pybuild)")
    for name, want in _FIELD_TYPES[type(msg)].items():
        v = getattr(msg, name, None)
        if not isinstance(v, want) or (want is int and isinstance(v, bool)):
            raise ProtocolError(f"{type(msg).__name__}.{name}: {type(v).__name__} is not what the protocol carries")
    _check_items(msg)


# ---------------------------------------------------------------------- frames

def write_message(f: IO[bytes], msg: WorkerMessage | ParentMessage) -> None:
    """Write one message (the caller serialises writers)."""
    body = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
    data = memoryview(struct.pack(">I", len(body)) + body)
    while data:
        n = f.write(data)
        data = data[n:] if n is not None else data
    f.flush()


def _read_exact(f: IO[bytes], n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        b = f.read(n - len(buf))
        if not b:
            break
        buf += b
    return bytes(buf)


def read_message(f: IO[bytes], expected: tuple[type, ...]) -> object | None:
    """The next message (validated against `expected`), or None at EOF (raw, unbuffered streams
    are fine). Raises ProtocolError for anything else."""
    head = _read_exact(f, 4)
    if len(head) < 4:
        return None
    (n,) = struct.unpack(">I", head)
    data = _read_exact(f, n)
    if len(data) < n:
        return None
    try:
        msg = pickle.loads(data)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a protocol error
        raise ProtocolError(f"unreadable sandbox message: {type(e).__name__}: {e}") from e
    validate(msg, expected)
    return msg


def read_from_worker(f: IO[bytes]) -> WorkerMessage | None:
    """The parent's read: the next worker message, or None at EOF."""
    msg = read_message(f, WORKER_MESSAGES)
    assert msg is None or isinstance(msg, WORKER_MESSAGES)
    return msg


def read_from_parent(f: IO[bytes]) -> ParentMessage | None:
    """The worker's read: the next Config or request, or None at EOF."""
    msg = read_message(f, (Config, *REQUESTS))
    assert msg is None or isinstance(msg, (Config, RunExec, RunFile, ExportRootfs))
    return msg
