"""RUN --mount: what each mount of an `ExecOp` becomes in the step (`exec_mounts` gives the
`StepMount`s for the step's init and the env entries of env secrets). Bind sources are host
contexts (copied, owners reset) or other chains (mounted read-only; a writable bind gets an
overlay or a copy whose writes are thrown away); cache mounts live under `<root>/cache-mounts`;
secrets are files on the worker's secrets tmpfs.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import posixpath
import re
import secrets as _secrets
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from builder.errors import SandboxError, SourceError
from builder.image.view import ChainSource, HostDir, Source
from builder.layer import inroot
from builder.sandbox.context import StepContext
from builder.sandbox.fileop import SourceDir, apply_file_op
from builder.sandbox.spec import StepMount
from builder.sandbox.userns import require_ids
from builder.sandbox.views import source_path, step_view
from builder.solve import ops
from builder.store.snapshot import copy_tree


@dataclass(frozen=True, slots=True, kw_only=True)
class MountEnv:
    """One step's mount set-up: the worker, the step's sources and secrets, its private dir
    `sd` (names in it: ctx<n>, b<n>, rw<n>, u<n>, w<n>, c<n>, cs<n>, p<n>) and the stack that
    undoes the mounts and locks."""
    ctx: StepContext
    sources: Mapping[int, Source]
    secrets: Mapping[str, bytes]
    sd: Path
    stack: contextlib.ExitStack


def exec_mounts(env: MountEnv, mounts: tuple[ops.Mount, ...]) -> tuple[list[StepMount], list[str]]:
    """The step's mounts, in order, and the KEY=VALUE entries that env secrets add."""
    out: list[StepMount] = []
    extra_env: list[str] = []
    for n, m in enumerate(mounts):
        if m.type == "bind":
            out.append(_bind_mount(env, m, n))
        elif m.type == "cache":
            out.append(_cache_mount(env, m, n))
        elif m.type == "tmpfs":
            out.append(StepMount(kind="tmpfs", target=m.target, size=m.size))
        elif m.type == "secret":
            out.extend(_secret_mount(env, m, extra_env))
        else:
            raise SandboxError(f"RUN --mount=type={m.type} is not supported")
    return out, extra_env


def _bind_mount(env: MountEnv, m: ops.Mount, n: int) -> StepMount:
    if m.input is None or m.input not in env.sources:
        raise SandboxError(f"bind mount {m.target}: no source given for input {m.input}")
    source = env.sources[m.input]
    if isinstance(source, HostDir):
        # The build context as a step sees it: .dockerignore applied, every file 0:0 (as BuildKit,
        # whose client resets owners when it sends the context); a private copy, so rw writes
        # are thrown away with it.
        src = _filled_from_context(source, m.source or "/", env.sd / f"ctx{n}")
        return StepMount(kind="bind", src=src, target=m.target, readonly=m.readonly, file=not os.path.isdir(src))
    if not isinstance(source, ChainSource):
        raise SandboxError(f"bind mount {m.target}: unknown source {source!r}")
    sd = env.sd
    # Read-only: the step's own view (never the stored snapshot: a step may remount its binds
    # read-write). Writable: a copy, or an overlay over the view, whose writes are thrown away.
    if m.readonly:
        base = step_view(env.ctx, source.chain, sd / f"b{n}", env.stack)
    else:
        base, _ = source_path(env.ctx, source, sd / f"b{n}", env.stack)
    try:
        src = inroot.resolve(base, m.source or "/", missing="raise")
    except FileNotFoundError as e:
        raise SourceError(f"bind mount {m.target}: source {m.source!r} not found") from e
    is_file = not os.path.isdir(src)
    if m.readonly:
        return StepMount(kind="bind", src=src, target=m.target, readonly=True, file=is_file)
    if is_file:
        return _private_file(env, src, m, n)
    if env.ctx.snap.name == "native":        # no overlay here: a throw-away copy
        copy_tree(Path(src), sd / f"rw{n}")
        return StepMount(kind="bind", src=str(sd / f"rw{n}"), target=m.target, readonly=False)
    up, wk = sd / f"u{n}", sd / f"w{n}"     # writable bind: writes are discarded after the step
    up.mkdir()
    wk.mkdir()
    empty = sd / "empty"
    empty.mkdir(exist_ok=True)
    return StepMount(kind="overlay", lower=(src, str(empty)), upper=str(up), work=str(wk), target=m.target)


def _private_file(env: MountEnv, src: str, m: ops.Mount, n: int) -> StepMount:
    """A writable bind of a file of a chain: a copy of a regular file (writes are thrown away);
    anything else (a fifo, a socket) from the step's own read-only view."""
    if not stat.S_ISREG(os.stat(src).st_mode):
        source = env.sources[m.input] if m.input is not None else None
        assert isinstance(source, ChainSource)
        view = step_view(env.ctx, source.chain, env.sd / f"bf{n}", env.stack)
        own = inroot.resolve(view, m.source or "/", missing="raise")
        return StepMount(kind="bind", src=own, target=m.target, readonly=True, file=True)
    dst = env.sd / f"rw{n}"
    shutil.copy2(src, dst, follow_symlinks=False)
    st = os.stat(src)
    os.chown(dst, st.st_uid, st.st_gid)
    os.chmod(dst, stat.S_IMODE(st.st_mode))
    return StepMount(kind="bind", src=str(dst), target=m.target, readonly=False, file=True)


def _filled_from_context(source: HostDir, subpath: str, dest: Path) -> str:
    """Copy `subpath` of a host context (excludes applied, owners reset to 0:0) to `dest`; return
    the path of the copied directory or file."""
    dest.mkdir(mode=0o755)
    rel = subpath.strip("/") or "."
    src_dir = SourceDir(path=source.path, excludes=tuple(source.excludes), reset_owner=True)
    try:
        apply_file_op(dest, ops.FileOp(actions=(ops.Copy(src=1, src_paths=(rel,), dest="/x", allow_wildcard=False),)),
                      {1: src_dir})
    except SourceError as e:
        raise SourceError(f"bind mount source {subpath!r} not found in the build context") from e
    return str(dest / "x")


def _sanitise(cache_id: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", cache_id).strip("._")[:40] or "cache"
    return f"{safe}-{hashlib.sha256(cache_id.encode()).hexdigest()[:12]}"


def _seed_cache(env: MountEnv, source: Source, subpath: str, dest: Path, view: Path) -> None:
    """A new cache directory filled from `from=` (a stage or the context) at `source=`."""
    if isinstance(source, HostDir):
        filled = _filled_from_context(source, subpath, view)
        os.rename(filled, dest)
        return
    base, _ = source_path(env.ctx, source, view, env.stack)
    try:
        src = inroot.resolve(base, subpath, missing="raise")
    except FileNotFoundError as e:
        raise SourceError(f"cache mount source {subpath!r} not found") from e
    copy_tree(Path(src), dest)


def _new_cache_dir(env: MountEnv, m: ops.Mount, n: int, d: Path, uid: int, gid: int) -> None:
    tmp = env.sd / f"c{n}"
    if m.input is not None and m.input in env.sources:      # from=: seeded once, when created
        _seed_cache(env, env.sources[m.input], m.source or "/", tmp, env.sd / f"cs{n}")
    else:
        tmp.mkdir(mode=0o755)
    os.chown(tmp, uid, gid)
    # BuildKit 20.10 creates the directory with the mode's permission bits only (Go's
    # os.FileMode drops setuid/setgid/sticky there): mode=1777 gives 0777 & ~umask = 0755.
    os.chmod(tmp, (m.mode & 0o777) & ~0o022 if m.mode is not None else 0o755)
    try:
        os.rename(tmp, d)
    except OSError:
        pass   # another step created it first


def _cache_mount(env: MountEnv, m: ops.Mount, n: int) -> StepMount:
    uid, gid = m.uid or 0, m.gid or 0
    require_ids(env.ctx.idmap(), uid, gid, what=f"cache mount {m.target}")
    base = env.ctx.root / "cache-mounts"
    base.mkdir(parents=True, exist_ok=True)
    d = base / _sanitise(m.cache_id or m.target)
    if not d.is_dir():
        _new_cache_dir(env, m, n, d, uid, gid)
    if m.sharing in ("locked", "private"):
        fd = os.open(str(d) + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        env.stack.callback(os.close, fd)
        if m.sharing == "locked":
            fcntl.flock(fd, fcntl.LOCK_EX)
        else:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                d = env.sd / f"p{n}"            # busy: a private, throw-away instance
                d.mkdir(mode=0o755)
                os.chown(d, uid, gid)
    return StepMount(kind="bind", src=str(d), target=m.target, readonly=m.readonly)


def _secret_mount(env: MountEnv, m: ops.Mount, extra_env: list[str]) -> list[StepMount]:
    sid = m.secret_id or posixpath.basename(m.target.rstrip("/"))
    data = env.secrets.get(sid)
    if data is None:
        if m.required:
            raise SandboxError(f"secret {sid}: not found (required)")
        return []
    if m.env:
        extra_env.append(f"{m.env}={data.decode('utf-8', 'surrogateescape')}")
        if not m.target:
            return []
    uid, gid = m.uid or 0, m.gid or 0
    require_ids(env.ctx.idmap(), uid, gid, what=f"secret {sid}")
    p = env.ctx.secrets / _secrets.token_hex(8)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chown(p, uid, gid)
    os.chmod(p, m.mode if m.mode is not None else 0o400)
    target = m.target or f"/run/secrets/{sid}"
    return [StepMount(kind="bind", src=str(p), target=target, readonly=True, file=True)]
