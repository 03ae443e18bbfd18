"""What the worker's operations (`builder.sandbox.{exec_step,steps,mounts,commit}`) need from
the worker: a small Protocol, so that they do not depend on the server that runs them.
`builder.sandbox.workspace.Workspace` is the one implementation.
"""
from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Protocol

from builder.sandbox.initpool import StartedInit
from builder.sandbox.protocol import Chunk, Config
from builder.sandbox.userns import IdMap
from builder.store.content import ContentStore
from builder.store.snapshot import Snapshotter


class StepContext(Protocol):
    """The worker's state as one operation sees it. `root` is the pybuild root (cache-mounts/
    live there), `tmp` the worker's private temp dir (hosts, resolv.conf), `secrets` a tmpfs
    for secret files. Thread-safe: several operations run at once."""

    @property
    def cfg(self) -> Config: ...
    @property
    def store(self) -> ContentStore: ...
    @property
    def snap(self) -> Snapshotter: ...
    @property
    def root(self) -> Path: ...
    @property
    def tmp(self) -> Path: ...
    @property
    def secrets(self) -> Path: ...
    @property
    def cancelled(self) -> bool: ...

    def idmap(self) -> IdMap:
        """The ids the worker's user namespace maps."""
        ...

    def send(self, msg: Chunk) -> None:
        """Send output of request `msg.id` to the parent."""
        ...

    def start_init(self) -> StartedInit:
        """A started step init, waiting for its spec (builder.sandbox.initpool)."""
        ...

    def confine(self, rid: int, pid: int) -> None:
        """Put `pid` (the init of request `rid`, before it starts the step) under the per-step
        limits, if any were asked for (SandboxError if that fails)."""
        ...

    def oom_killed(self, rid: int) -> bool:
        """Did request `rid`'s step hit its memory limit?"""
        ...

    def release(self, rid: int) -> None:
        """Drop what `confine` made, once the step's processes are gone."""
        ...

    def track(self, rid: int, proc: "subprocess.Popen[bytes] | None") -> None:
        """Register (proc) or forget (None) the running process of request `rid`, so that a
        cancel kills it; a process registered after a cancel is killed at once."""
        ...
