"""The worker's state inside its namespace: its temp dirs, the secrets tmpfs, the /etc files
steps see, the snapshotter, the running steps (`Workspace`, the `StepContext` of the
operations). Created by `builder.sandbox.server` once the namespace is entered.
"""
from __future__ import annotations

import os
import stat
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Callable

from builder.errors import SandboxError
from builder.layer.limits import ExpandLimit
from builder.sandbox import linux
from builder.sandbox.cgroups import CgroupUnavailable, Limits, StepCgroups
from builder.sandbox.initpool import InitPool, StartedInit, children, kill_step
from builder.sandbox.protocol import Config, WorkerMessage
from builder.sandbox.userns import IdMap
from builder.store.content import ContentStore
from builder.store.snapshot import Snapshotter, clean_stale, make_snapshotter, remove_tree

Send = Callable[[WorkerMessage], None]


class Workspace:
    """Set up in the constructor (raises SandboxError/OSError if it cannot), torn down by
    `close()`. `cancelled` once set stays set: running steps are killed, new ones refused."""

    def __init__(self, cfg: Config, send: Send) -> None:
        self.cfg = cfg
        self._send = send
        self.root = Path(cfg.root)
        self.store = ContentStore(Path(cfg.store_root))
        self.cancelled = False
        self._running: dict[int, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()
        linux.mount(None, "/", None, linux.MS_REC | linux.MS_PRIVATE)
        (self.root / "w").mkdir(parents=True, exist_ok=True)
        clean_stale(self.root / "w", self.root / "so", self.root / "sn")
        self.tmp = Path(tempfile.mkdtemp(dir=self.root / "w", prefix=f"{os.getpid()}-"))
        self.secrets = self.tmp / "secrets"
        self.secrets.mkdir(mode=0o700)
        linux.mount("tmpfs", str(self.secrets), "tmpfs", linux.MS_NOSUID | linux.MS_NODEV, "mode=700")
        self._write_etc()
        limit = ExpandLimit(max_bytes=cfg.max_layer_expansion, max_ratio=cfg.max_expansion_ratio)
        self.snap: Snapshotter = make_snapshotter(self._snapshotter_kind(), self.root, self.store, limit=limit)
        self.cgroups = self._step_cgroups()
        self._inits = InitPool(cfg.nsinit_argv)
        self._inits.prime()

    def _step_cgroups(self) -> StepCgroups | None:
        """The step cgroups when a limit was asked for; SandboxError (saying why and what to
        do) when they cannot be had: an asked-for limit is never dropped silently."""
        limits = Limits(memory=self.cfg.step_memory, pids=self.cfg.step_pids)
        if not limits.controllers():
            return None
        me, parent = os.getpid(), os.getppid()
        ours = {me, parent}
        todo = [parent]
        while todo:
            kids = children(todo.pop())
            ours.update(kids)
            todo += kids
        try:
            return StepCgroups.setup(limits, ours, tag=str(me))
        except CgroupUnavailable as e:
            raise SandboxError(f"cannot limit RUN steps' memory/processes: {e}") from None

    def _snapshotter_kind(self) -> str:
        kind, root = self.cfg.snapshotter, self.cfg.root
        if any(c in root for c in ",:") and kind != "native":
            if kind == "overlay":
                raise SandboxError(f"the overlay snapshotter cannot use a root path with ',' or ':': {root}")
            kind = "native"
        if kind == "auto":
            kind = "overlay" if self._probe_overlay() else "native"
        return kind

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
        d = self.tmp / "probe"
        for sub in ("l1", "l2", "u", "w", "m"):
            (d / sub).mkdir(parents=True)
        (d / "l1" / "f").write_text("x")
        try:
            linux.mount("overlay", str(d / "m"), "overlay", 0,
                        linux.overlay_options([str(d / "l1"), str(d / "l2")], str(d / "u"), str(d / "w")))
        except OSError:
            return False
        try:
            os.unlink(d / "m" / "f")
            (d / "m" / "g").write_text("y")
        except OSError:
            return False
        finally:
            linux.umount(str(d / "m"), linux.MNT_DETACH)
        try:
            st = os.lstat(d / "u" / "f")
        except OSError:
            return False
        return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0

    # -------------------------------------------------------------- StepContext
    def idmap(self) -> IdMap:
        return IdMap(size=self.cfg.idmap_size, setgroups=self.cfg.setgroups, user=self.cfg.user)

    def send(self, msg: WorkerMessage) -> None:
        self._send(msg)

    def start_init(self) -> StartedInit:
        return self._inits.take()

    def track(self, rid: int, proc: "subprocess.Popen[bytes] | None") -> None:
        with self._lock:
            if proc is None:
                self._running.pop(rid, None)
                return
            self._running[rid] = proc
        if self.cancelled:
            kill_step(proc.pid)

    def confine(self, rid: int, pid: int) -> None:
        if self.cgroups is not None:
            try:
                self.cgroups.enter(rid, pid)
            except OSError as e:
                raise SandboxError(f"cannot move the RUN step into its cgroup: {e}") from e

    def oom_killed(self, rid: int) -> bool:
        return self.cgroups is not None and self.cgroups.oom_killed(rid)

    def release(self, rid: int) -> None:
        if self.cgroups is not None:
            self.cgroups.leave(rid)

    # -------------------------------------------------------------- lifecycle
    def cancel(self) -> None:
        """Kill every running step; later ones are refused."""
        self.cancelled = True
        with self._lock:
            procs = list(self._running.values())
        for p in procs:
            if p.poll() is None:
                kill_step(p.pid)

    def close(self) -> None:
        self._inits.close()
        try:
            linux.umount(str(self.secrets), linux.MNT_DETACH)
        except OSError:
            pass
        remove_tree(self.tmp)
