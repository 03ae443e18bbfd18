"""The sandbox worker's operations (run inside its user + mount namespace, see builder.sandbox.server):
file ops, RUN steps with their mounts, layer commits and root filesystem exports. Everything that
touches snapshot contents happens here, since the files belong to ids mapped in the namespace.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from builder.image.oci import Compression
from builder.sandbox.server import Chunk, _Server


DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
TAIL_LINES = 20


class _ChunkSink:
    """A write-only stream that forwards bytes to the parent as `Chunk`s of about 1 MiB."""

    def __init__(self, server: _Server, rid: int) -> None:
        self.server, self.rid, self.buf = server, rid, bytearray()

    def write(self, b: bytes) -> int:
        self.buf += b
        if len(self.buf) >= 1 << 20:
            self.flush()
        return len(b)

    def flush(self) -> None:
        if self.buf:
            self.server.send(Chunk(id=self.rid, data=bytes(self.buf)))
            self.buf.clear()


def _finish_layer(server: _Server, active: Any) -> Any:
    """Write the layer of `active` into the store and install its snapshot; None if empty."""
    from builder.image.view import LayerRef
    from builder.layer.tar import write_layer
    from builder.image.oci import Descriptor, MediaType
    cfg = server.cfg
    with server.store.writer() as w:
        stats = write_layer(active.fs, server.snap.changes(active), w,  # type: ignore[arg-type]
                            compression=cfg.compression, source_date_epoch=cfg.source_date_epoch)
        if stats.empty:
            server.snap.abort(active)
            return None
        digest, size = w.commit()
    ref = LayerRef(descriptor=Descriptor(media_type=MediaType.oci_layer(cfg.compression), digest=digest, size=size),
                   diff_id=stats.diff_id)
    server.snap.commit(active, active.base + (ref,))
    return ref


def _mount_view(server: _Server, chain: Any, where: Any, stack: Any) -> str:
    """A read-only merged view of `chain` in the worker's mount namespace; returns its path."""
    from builder.sandbox import nsinit
    spec = server.snap.view(chain)
    if spec.type == "bind":
        return spec.path
    where.mkdir(parents=True, exist_ok=True)
    nsinit.mount("overlay", str(where), "overlay", nsinit.MS_RDONLY, nsinit.overlay_options(list(spec.lower), None, None))
    stack.callback(nsinit.umount, str(where), nsinit.MNT_DETACH)
    return str(where)


def _source_path(server: _Server, src: Any, where: Any, stack: Any) -> tuple[str, tuple[str, ...]]:
    from builder.image.view import ChainSource, HostDir
    if isinstance(src, HostDir):
        return str(src.path), tuple(src.excludes)
    if isinstance(src, ChainSource):
        return _mount_view(server, src.chain, where, stack), ()
    from builder.errors import SandboxError
    raise SandboxError(f"unknown source {src!r}")


def _step_dir(server: _Server, stack: Any) -> Any:
    import tempfile

    from builder.store.snapshot import remove_tree
    d = Path(tempfile.mkdtemp(dir=server.tmp, prefix="s"))
    stack.callback(remove_tree, d)
    return d


def run_file(server: _Server, rid: int, *, base: Any, op: Any, sources: Any) -> Any:
    import contextlib
    import errno

    from builder.sandbox import nsinit
    from builder.errors import IdMappingError
    from builder.sandbox.fileop import SourceDir, apply_file_op
    from builder.image.view import HostDir
    from builder.sandbox.userns import how_to_add_range
    active = server.snap.prepare(base)
    try:
        with contextlib.ExitStack() as stack:
            sd = _step_dir(server, stack)
            srcs = {}
            for i, src in sources.items():
                path, excludes = _source_path(server, src, sd / f"v{i}", stack)
                srcs[i] = SourceDir(path=Path(path), excludes=excludes, reset_owner=isinstance(src, HostDir))
            root = active.fs
            if active.rootfs.type == "overlay":
                root = sd / "m"
                root.mkdir()
                rf = active.rootfs
                nsinit.mount("overlay", str(root), "overlay", 0, nsinit.overlay_options(list(rf.lower), rf.upper, rf.work))
                stack.callback(nsinit.umount, str(root), 0)
            try:
                apply_file_op(root, op, srcs)
            except OSError as e:
                if e.errno == errno.EINVAL and server.cfg.idmap_size == 1:
                    raise IdMappingError(f"file operation failed ({e}): {how_to_add_range(server.cfg.user)}") from e
                raise
        return _finish_layer(server, active)
    except BaseException:
        server.snap.abort(active)
        raise


def export_rootfs(server: _Server, rid: int, *, chain: Any, dest_dir: str | None, tar: bool,
                  tar_path: str | None = None) -> None:
    import contextlib

    from builder.layer.diff import tree_changes
    from builder.layer.tar import write_layer
    from builder.store.snapshot import copy_tree
    with contextlib.ExitStack() as stack:
        sd = _step_dir(server, stack)
        root = Path(_mount_view(server, chain, sd / "v", stack))
        if dest_dir is not None:
            copy_tree(root, Path(dest_dir), owners=False, exist_ok=True)
        if tar or tar_path:
            (sd / "e").mkdir()
            # A file the parent made for us is written here directly (the worker's root is the
            # invoking user outside, so it may); a stream goes back to the parent in frames.
            with contextlib.ExitStack() as out:
                sink: Any = (out.enter_context(open(tar_path, "r+b")) if tar_path
                             else _ChunkSink(server, rid))
                write_layer(root, tree_changes(sd / "e", root), sink,
                            compression=Compression.UNCOMPRESSED, source_date_epoch=server.cfg.source_date_epoch)
                sink.flush()


# ---------------------------------------------------------------------- RUN

def run_exec(server: _Server, rid: int, *, base: Any, op: Any, mount_sources: Any,
              secrets: Any, stream: bool) -> Any:
    import contextlib
    active = server.snap.prepare(base)
    try:
        with contextlib.ExitStack() as stack:
            sd = _step_dir(server, stack)
            mounts, env_extra = _exec_mounts(server, op, mount_sources, secrets, sd, stack)
            (sd / "r").mkdir()
            env = list(op.env)
            if not any(e.startswith("PATH=") for e in env):
                env.insert(0, DEFAULT_PATH)
            spec = {
                "mountpoint": str(sd / "r"), "rootfs": active.rootfs.to_json(),
                "args": list(op.args), "env": env + env_extra, "cwd": op.cwd or "/", "user": op.user,
                "network": op.network, "mounts": mounts, "hostname": "buildkitsandbox",
                "etc_hosts": str(server.tmp / "hosts"), "etc_resolv.conf": str(server.tmp / "resolv.conf"),
                "idmap_size": server.cfg.idmap_size, "setgroups": server.cfg.setgroups,
            }
            status = _spawn_step(server, rid, spec, op, stream)
        _remove_stubs(active, status, overlay=active.rootfs.type == "overlay")
        if active.rootfs.type == "overlay":
            _relink_copied_up(active)
        return _finish_layer(server, active)
    except BaseException:
        server.snap.abort(active)
        raise


def _exec_mounts(server: _Server, op: Any, mount_sources: Any, secrets: Any, sd: Any,
                 stack: Any) -> tuple[list[dict], list[str]]:
    from builder.errors import SandboxError
    out: list[dict] = []
    env: list[str] = []
    for n, m in enumerate(op.mounts):
        if m.type == "bind":
            out.append(_bind_mount(server, m, mount_sources, sd, n, stack))
        elif m.type == "cache":
            out.append(_cache_mount(server, m, mount_sources, sd, n, stack))
        elif m.type == "tmpfs":
            out.append({"kind": "tmpfs", "target": m.target, "size": m.size})
        elif m.type == "secret":
            out.extend(_secret_mount(server, m, secrets, env))
        else:
            raise SandboxError(f"RUN --mount=type={m.type} is not supported")
    return out, env


def _bind_mount(server: _Server, m: Any, mount_sources: Any, sd: Any, n: int, stack: Any) -> dict:
    from builder.sandbox import nsinit
    from builder.errors import SandboxError, SourceError
    if m.input is None or m.input not in mount_sources:
        raise SandboxError(f"bind mount {m.target}: no source given for input {m.input}")
    source = mount_sources[m.input]
    from builder.image.view import HostDir
    if isinstance(source, HostDir):
        # The build context as a step sees it: .dockerignore applied, every file 0:0 (as BuildKit,
        # whose client resets owners when it sends the context); a private copy, so rw writes
        # are thrown away with it.
        copy = sd / f"ctx{n}"
        src = _filled_from_context(source, m.source or "/", copy)
        is_file = not os.path.isdir(src)
        return {"kind": "bind", "src": src, "target": m.target, "readonly": m.readonly, "file": is_file}
    base, _ = _source_path(server, source, sd / f"b{n}", stack)
    try:
        src = nsinit.resolve(base, m.source or "/", create=None, stubs=None)
    except FileNotFoundError as e:
        raise SourceError(f"bind mount {m.target}: source {m.source!r} not found") from e
    is_file = not os.path.isdir(src)
    if m.readonly or is_file:
        return {"kind": "bind", "src": src, "target": m.target, "readonly": m.readonly, "file": is_file}
    if server.snap.name == "native":        # no overlay here: a throw-away copy
        from builder.store.snapshot import copy_tree
        copy_tree(Path(src), sd / f"rw{n}")
        return {"kind": "bind", "src": str(sd / f"rw{n}"), "target": m.target, "readonly": False}
    up, wk = sd / f"u{n}", sd / f"w{n}"     # writable bind: writes are discarded after the step
    up.mkdir()
    wk.mkdir()
    empty = sd / "empty"
    empty.mkdir(exist_ok=True)
    return {"kind": "overlay", "lower": [src, str(empty)], "upper": str(up), "work": str(wk), "target": m.target}


def _filled_from_context(source: Any, subpath: str, dest: Path) -> str:
    """Copy `subpath` of a host context (excludes applied, owners reset to 0:0) to `dest`; return
    the path of the copied directory or file."""
    from builder.solve import ops
    from builder.errors import SourceError
    from builder.sandbox.fileop import SourceDir, apply_file_op
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
    import hashlib
    import re
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", cache_id).strip("._")[:40] or "cache"
    return f"{safe}-{hashlib.sha256(cache_id.encode()).hexdigest()[:12]}"


def _seed_cache(server: _Server, source: Any, subpath: str, dest: Path, view: Path, stack: Any) -> None:
    """A new cache directory filled from `from=` (a stage or the context) at `source=`."""
    from builder.sandbox import nsinit
    from builder.errors import SourceError
    from builder.image.view import HostDir
    from builder.store.snapshot import copy_tree
    if isinstance(source, HostDir):
        filled = _filled_from_context(source, subpath, view)
        os.rename(filled, dest)
        return
    base, _ = _source_path(server, source, view, stack)
    try:
        src = nsinit.resolve(base, subpath, create=None, stubs=None)
    except FileNotFoundError as e:
        raise SourceError(f"cache mount source {subpath!r} not found") from e
    copy_tree(Path(src), dest)


def _cache_mount(server: _Server, m: Any, mount_sources: Any, sd: Any, n: int, stack: Any) -> dict:
    import fcntl

    from builder.sandbox.userns import require_ids
    uid, gid = m.uid or 0, m.gid or 0
    require_ids(server.cfg_idmap(), uid, gid, what=f"cache mount {m.target}")
    base = server.root / "cache-mounts"
    base.mkdir(parents=True, exist_ok=True)
    d = base / _sanitise(m.cache_id or m.target)
    if not d.is_dir():
        tmp = sd / f"c{n}"
        if m.input is not None and m.input in mount_sources:      # from=: seeded once, when created
            _seed_cache(server, mount_sources[m.input], m.source or "/", tmp, sd / f"cs{n}", stack)
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
    if m.sharing in ("locked", "private"):
        fd = os.open(str(d) + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        stack.callback(os.close, fd)
        if m.sharing == "locked":
            fcntl.flock(fd, fcntl.LOCK_EX)
        else:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                d = sd / f"p{n}"            # busy: a private, throw-away instance
                d.mkdir(mode=0o755)
                os.chown(d, uid, gid)
    return {"kind": "bind", "src": str(d), "target": m.target, "readonly": False}


def _secret_mount(server: _Server, m: Any, secrets: Any, env: list[str]) -> list[dict]:
    import posixpath
    import secrets as _secrets

    from builder.errors import SandboxError
    from builder.sandbox.userns import require_ids
    sid = m.secret_id or posixpath.basename(m.target.rstrip("/"))
    data = secrets.get(sid)
    if data is None:
        if m.required:
            raise SandboxError(f"secret {sid}: not found (required)")
        return []
    if m.env:
        env.append(f"{m.env}={data.decode('utf-8', 'surrogateescape')}")
        if not m.target:
            return []
    uid, gid = m.uid or 0, m.gid or 0
    require_ids(server.cfg_idmap(), uid, gid, what=f"secret {sid}")
    p = server.secrets / _secrets.token_hex(8)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chown(p, uid, gid)
    os.chmod(p, m.mode if m.mode is not None else 0o400)
    target = m.target or f"/run/secrets/{sid}"
    return [{"kind": "bind", "src": str(p), "target": target, "readonly": True, "file": True}]


def _spawn_step(server: _Server, rid: int, spec: dict, op: Any, stream: bool) -> dict:
    """Run one step's nsinit; stream its output; return its status report (stubs)."""
    import json
    import subprocess

    from builder.errors import BuildCancelled, ExecError, IdMappingError, SandboxError
    from builder.sandbox.userns import how_to_add_range
    r_out, w_out = os.pipe()
    r_st, w_st = os.pipe()
    spec["status_fd"] = w_st
    try:
        p = subprocess.Popen(list(server.cfg.nsinit_argv), stdin=subprocess.PIPE, stdout=w_out, stderr=w_out,
                             pass_fds=(w_st,), close_fds=True)
    finally:
        os.close(w_out)
        os.close(w_st)
    with server.lock:
        server.running[rid] = p
    if server.cancelled:
        p.kill()
    tail = bytearray()
    try:
        assert p.stdin is not None
        p.stdin.write(json.dumps(spec).encode())
        p.stdin.close()
        while True:
            b = os.read(r_out, 65536)
            if not b:
                break
            if stream:
                server.send(Chunk(id=rid, data=b))
            tail += b
            if len(tail) > 65536:
                del tail[:-32768]
        code = p.wait()
        with os.fdopen(r_st, "rb") as f:
            r_st = -1
            lines = [json.loads(x) for x in f.read().splitlines() if x.strip()]
    finally:
        with server.lock:
            server.running.pop(rid, None)
        os.close(r_out)
        if r_st >= 0:
            os.close(r_st)
        if p.poll() is None:
            p.kill()
            p.wait()
    if server.cancelled:
        raise BuildCancelled("build cancelled")
    status: dict = {}
    for ln in lines:
        if "error" in ln:
            if ln["error"] == "idmap":
                raise IdMappingError(f"{ln['message']}: {how_to_add_range(server.cfg.user)}")
            if ln["error"] == "user":
                raise SandboxError(ln["message"])
            raise SandboxError(f"cannot set up the RUN sandbox: {ln['message']}")
        status.update(ln)
    if code != 0:
        text = tail.decode("utf-8", "replace")
        out_tail = "\n".join(text.splitlines()[-TAIL_LINES:])
        cmd = " ".join(op.args)
        raise ExecError(f"process \"{cmd}\" did not complete successfully: exit code: {code}",
                        exit_code=code, output_tail=out_tail)
    return status


def _remove_stubs(active: Any, status: dict, *, overlay: bool) -> None:
    """Remove mount-point stubs the step's init created (when still empty), restore the times of
    the dirs they were made in, and (overlay) drop dirs that were only copied up for them."""
    import stat
    fs = active.fs
    for rel in reversed(status.get("stubs", [])):
        p = fs / rel
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            continue
        try:
            if stat.S_ISDIR(st.st_mode) and not os.listdir(p):
                os.rmdir(p)
            elif stat.S_ISREG(st.st_mode) and st.st_size == 0:
                os.unlink(p)
        except OSError:
            pass
    parents = sorted(status.get("parents", []), key=lambda x: -len(x[0]))
    for rel, atime, mtime in parents:
        p = fs / rel if rel else fs
        try:
            if stat.S_ISDIR(os.lstat(p).st_mode):
                os.utime(p, ns=(atime, mtime), follow_symlinks=False)
        except FileNotFoundError:
            continue
        if overlay and rel:
            _drop_copied_up(active, rel)


def _drop_copied_up(active: Any, rel: str) -> None:
    """Remove upper dirs on the way to `rel` that are empty and have their lower dir's mode and
    owner (only copied up because a stub was made in them; their mtime moved only because of
    the stub)."""
    import stat
    parts = rel.split("/")
    while parts:
        r = "/".join(parts)
        up = active.fs / r
        try:
            ust = os.lstat(up)
            if not stat.S_ISDIR(ust.st_mode) or os.listdir(up) or _has_opaque(up):
                return
        except FileNotFoundError:
            return
        lst = None
        for lower in active.rootfs.lower:
            try:
                lst = os.lstat(os.path.join(lower, r))
                break
            except FileNotFoundError:
                continue
        if lst is None or not stat.S_ISDIR(lst.st_mode):
            return
        if (lst.st_mode, lst.st_uid, lst.st_gid) != (ust.st_mode, ust.st_uid, ust.st_gid):
            return
        os.rmdir(up)
        parts.pop()


def _has_opaque(p: Any) -> bool:
    try:
        return os.getxattr(p, "user.overlay.opaque", follow_symlinks=False) == b"y"
    except OSError:
        return False


def _relink_copied_up(active: Any) -> None:
    """Overlay copy-up breaks hard links: a step that changes one name of a lower file with
    several names leaves the others untouched. BuildKit's differ reports every name of the
    changed inode, so give the other names (when nothing else changed or hid them) the same
    upper inode: the layer then carries the whole hard-link group, as with the copying
    snapshotter."""
    import stat
    lowers = list(active.rootfs.lower)
    wanted: dict[int, dict[tuple[int, int], str]] = {}      # lower index → (dev, ino) → upper rel
    for dirpath, _dirs, files in os.walk(active.fs):
        for name in files:
            full = os.path.join(dirpath, name)
            ust = os.lstat(full)
            if not stat.S_ISREG(ust.st_mode):
                continue
            rel = os.path.relpath(full, active.fs)
            for i, lower in enumerate(lowers):
                try:
                    lst = os.lstat(os.path.join(lower, rel))
                except (FileNotFoundError, NotADirectoryError):
                    continue
                if stat.S_ISREG(lst.st_mode) and lst.st_nlink > 1:
                    wanted.setdefault(i, {})[(lst.st_dev, lst.st_ino)] = rel
                break
    for i, inodes in wanted.items():
        for dirpath, _dirs, files in os.walk(lowers[i]):
            for name in files:
                full = os.path.join(dirpath, name)
                st = os.lstat(full)
                src = inodes.get((st.st_dev, st.st_ino))
                if src is None:
                    continue
                rel = os.path.relpath(full, lowers[i])
                if rel == src or _shadowed([active.fs, *lowers[:i]], rel):
                    continue
                parent = os.path.join(active.fs, os.path.dirname(rel))
                _mkparents(active.fs, lowers[i], os.path.dirname(rel))
                pst = os.lstat(parent)
                os.link(os.path.join(active.fs, src), os.path.join(active.fs, rel))
                os.utime(parent, ns=(pst.st_atime_ns, pst.st_mtime_ns))


def _shadowed(layers: list[str], rel: str) -> bool:
    """Is the lower name `rel` hidden or replaced by one of `layers` (the upper dir and the lower
    dirs above it)? Every path component is checked with lstat, never followed: a parent that
    became a symlink, a whiteout or a file, or an opaque directory, hides it, and so does any entry
    at `rel` itself."""
    import stat

    from builder.layer.tar import _OPAQUE_XATTRS, _lgetxattr
    parts = rel.split("/")
    for layer in layers:
        cur = layer
        for comp in parts[:-1]:
            cur = os.path.join(cur, comp)
            try:
                st = os.lstat(cur)
            except FileNotFoundError:
                break
            if not stat.S_ISDIR(st.st_mode):
                return True
            if any(_lgetxattr(os.fsencode(cur), x) == b"y" for x in _OPAQUE_XATTRS):
                return True
        else:
            if os.path.lexists(os.path.join(cur, parts[-1])):
                return True
    return False


def _mkparents(upper: Any, lower: str, rel: str) -> None:
    """Create the dirs of `rel` in `upper` that are missing, with the lower dirs' metadata."""
    if not rel or os.path.isdir(os.path.join(upper, rel)):
        return
    _mkparents(upper, lower, os.path.dirname(rel))
    st = os.lstat(os.path.join(lower, rel))
    p = os.path.join(upper, rel)
    os.mkdir(p)
    os.chown(p, st.st_uid, st.st_gid)
    os.chmod(p, st.st_mode & 0o7777)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
