"""The sandbox worker: one long-lived process per build inside a user + mount namespace.

Started by `builder.sandbox.client.Worker`. Protocol (all frames are 4-byte big-endian length + pickle
of the message dataclasses below; the parent is trusted, it started us):

1. worker: unshare(CLONE_NEWUSER|CLONE_NEWNS), writes b"U\\n" on stdout; the parent writes the
   id maps and answers b"M\\n" on stdin.
2. parent → `Config`; worker → `Reply(id=0, value=<snapshotter name>)` or `Failure(id=0)`.
3. parent → `Request`s (handled concurrently, one thread each); worker → `Chunk`s (step output,
   tar bytes) then exactly one `Reply` or `Failure` per request id.
4. any byte on the cancel fd kills every running step; later steps fail with BuildCancelled.
5. EOF on stdin: kill running steps, remove temp dirs, exit.

This module imports only the standard library at module level; the rest is imported after the
namespace is entered (unshare(CLONE_NEWUSER) needs a single-threaded process).
"""
from __future__ import annotations

import os
import pickle
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO
from builder.image.oci import Compression

CLONE_NEWUSER, CLONE_NEWNS = 0x10000000, 0x00020000


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    root: str
    store_root: str
    snapshotter: str
    compression: Compression
    source_date_epoch: int | None
    idmap_size: int
    setgroups: bool
    user: str
    nsinit_argv: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Request:
    id: int
    method: str
    kwargs: dict[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class Reply:
    id: int
    value: Any


@dataclass(frozen=True, slots=True, kw_only=True)
class Chunk:
    id: int
    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class Failure:
    """`kind` is the name of a builder.errors class."""
    id: int
    kind: str
    message: str
    exit_code: int = 0
    output_tail: str = ""


def write_frame(f: IO[bytes], msg: object) -> None:
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


def read_frame(f: IO[bytes]) -> object | None:
    """The next message, or None at EOF (raw, unbuffered streams are fine)."""
    head = _read_exact(f, 4)
    if len(head) < 4:
        return None
    (n,) = struct.unpack(">I", head)
    data = _read_exact(f, n)
    if len(data) < n:
        return None
    return pickle.loads(data)


def _enter_namespace(inp: BinaryIO, out: BinaryIO) -> None:
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWUSER | CLONE_NEWNS) != 0:
        e = ctypes.get_errno()
        sys.stderr.write(f"pybuild worker: unshare: {os.strerror(e)}\n")
        sys.exit(3)
    out.write(b"U\n")
    out.flush()
    if inp.readline() != b"M\n":
        sys.exit(3)


def main() -> None:
    inp = os.fdopen(0, "rb", buffering=0)
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)   # stray prints go to the log, never into the protocol
    _enter_namespace(inp, out)
    cancel_fd = int(os.environ.get("PYBUILD_CANCEL_FD", "-1"))
    serve(inp, out, cancel_fd)


if __name__ == "__main__":
    from builder.sandbox.server import main as _main   # so pickled classes are builder.sandbox.server.*
    _main()


# ====================================================================== server (inside the namespace)

def serve(inp: BinaryIO, out: BinaryIO, cancel_fd: int) -> None:
    """Handle the config, then requests until EOF; every request runs in its own thread."""
    import threading
    cfg = read_frame(inp)
    if not isinstance(cfg, Config):
        return
    lock = threading.Lock()

    def send(msg: object) -> None:
        with lock:
            write_frame(out, msg)

    try:
        server = _Server(cfg, send)
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        send(_failure(0, e))
        return
    send(Reply(id=0, value=server.snap.name))
    if cancel_fd >= 0:
        threading.Thread(target=_watch_cancel, args=(cancel_fd, server), daemon=True).start()
    threads: list[threading.Thread] = []
    try:
        while True:
            msg = read_frame(inp)
            if not isinstance(msg, Request):
                break
            t = threading.Thread(target=server.handle, args=(msg,), daemon=True)
            t.start()
            threads = [x for x in threads if x.is_alive()] + [t]
    finally:
        server.cancelled = True      # steps still running now are killed and report BuildCancelled
        server.kill_all()
        for t in threads:
            t.join(timeout=10)
        server.close()


def _watch_cancel(fd: int, server: "_Server") -> None:
    while True:
        try:
            b = os.read(fd, 64)
        except OSError:
            return
        if not b:
            return
        server.cancelled = True
        server.kill_all()


def _failure(rid: int, e: BaseException) -> Failure:
    from builder import errors
    if isinstance(e, errors.ExecError):
        return Failure(id=rid, kind="ExecError", message=str(e), exit_code=e.exit_code, output_tail=e.output_tail)
    if isinstance(e, errors.PybuildError):
        return Failure(id=rid, kind=type(e).__name__, message=str(e))
    import traceback
    tb = "".join(traceback.format_exception(e))
    sys.stderr.write(tb)
    return Failure(id=rid, kind="SandboxError", message=f"sandbox worker: {type(e).__name__}: {e}")


class _Server:
    def __init__(self, cfg: Config, send: Any) -> None:
        import tempfile
        import threading

        from builder.sandbox import nsinit
        from builder.errors import SandboxError
        from builder.store.snapshot import clean_stale, make_snapshotter
        from builder.store.content import ContentStore
        self.cfg = cfg
        self.send = send
        self.root = Path(cfg.root)
        self.store = ContentStore(Path(cfg.store_root))
        self.cancelled = False
        self.running: dict[int, Any] = {}
        self.lock = threading.Lock()
        nsinit.mount(None, "/", None, nsinit.MS_REC | nsinit.MS_PRIVATE)
        (self.root / "w").mkdir(parents=True, exist_ok=True)
        clean_stale(self.root / "w", self.root / "so", self.root / "sn")
        self.tmp = Path(tempfile.mkdtemp(dir=self.root / "w", prefix=f"{os.getpid()}-"))
        self.secrets = self.tmp / "secrets"
        self.secrets.mkdir(mode=0o700)
        nsinit.mount("tmpfs", str(self.secrets), "tmpfs", nsinit.MS_NOSUID | nsinit.MS_NODEV, "mode=700")
        self._write_etc()
        kind = cfg.snapshotter
        if any(c in cfg.root for c in ",:") and kind != "native":
            if kind == "overlay":
                raise SandboxError(f"the overlay snapshotter cannot use a root path with ',' or ':': {cfg.root}")
            kind = "native"
        if kind == "auto":
            kind = "overlay" if self._probe_overlay() else "native"
        self.snap = make_snapshotter(kind, self.root, self.store)

    # -------------------------------------------------------------- lifecycle
    def _write_etc(self) -> None:
        (self.tmp / "hosts").write_text(
            "127.0.0.1\tlocalhost buildkitsandbox\n::1\tlocalhost ip6-localhost ip6-loopback\n")
        try:
            resolv = open("/etc/resolv.conf", "rb").read()
        except OSError:
            resolv = b""
        if b"nameserver" not in resolv:
            resolv = b"nameserver 8.8.8.8\nnameserver 8.8.4.4\n"
        (self.tmp / "resolv.conf").write_bytes(resolv)

    def _probe_overlay(self) -> bool:
        """Can we mount an overlay with userxattr here, and does it record whiteouts as 0/0?"""
        import stat
        from builder.sandbox import nsinit
        d = self.tmp / "probe"
        for sub in ("l1", "l2", "u", "w", "m"):
            (d / sub).mkdir(parents=True)
        (d / "l1" / "f").write_text("x")
        try:
            nsinit.mount("overlay", str(d / "m"), "overlay", 0,
                         nsinit.overlay_options([str(d / "l1"), str(d / "l2")], str(d / "u"), str(d / "w")))
        except OSError:
            return False
        try:
            os.unlink(d / "m" / "f")
            (d / "m" / "g").write_text("y")
        except OSError:
            return False
        finally:
            nsinit.umount(str(d / "m"), nsinit.MNT_DETACH)
        try:
            st = os.lstat(d / "u" / "f")
        except OSError:
            return False
        return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0

    def cfg_idmap(self) -> Any:
        from builder.sandbox.userns import IdMap
        return IdMap(size=self.cfg.idmap_size, setgroups=self.cfg.setgroups, user=self.cfg.user)

    def kill_all(self) -> None:
        import signal
        with self.lock:
            procs = list(self.running.values())
        for p in procs:
            try:
                p.send_signal(signal.SIGKILL)
            except OSError:
                pass

    def close(self) -> None:
        from builder.sandbox import nsinit
        from builder.store.snapshot import remove_tree
        try:
            nsinit.umount(str(self.secrets), nsinit.MNT_DETACH)
        except OSError:
            pass
        remove_tree(self.tmp)

    # -------------------------------------------------------------- dispatch
    def handle(self, req: Request) -> None:
        from builder.errors import BuildCancelled
        try:
            if self.cancelled:
                raise BuildCancelled("build cancelled")
            fn = getattr(self, "op_" + req.method)
            value = fn(req.id, **req.kwargs)
        except BaseException as e:  # noqa: BLE001 - every failure goes back to the parent
            if self.cancelled and not isinstance(e, BuildCancelled):
                e = BuildCancelled("build cancelled")
            self.send(_failure(req.id, e))
            return
        self.send(Reply(id=req.id, value=value))

    def op_run_exec(self, rid: int, **kw: Any) -> Any:
        from builder.sandbox.steps import run_exec
        return run_exec(self, rid, **kw)

    def op_run_file(self, rid: int, **kw: Any) -> Any:
        from builder.sandbox.steps import run_file
        return run_file(self, rid, **kw)

    def op_export_rootfs(self, rid: int, **kw: Any) -> Any:
        from builder.sandbox.steps import export_rootfs
        return export_rootfs(self, rid, **kw)
