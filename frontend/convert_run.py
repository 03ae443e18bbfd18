"""Dispatch of RUN: an ExecOp vertex over the stage's root (input 0), with `--mount`s (bind and
cache `from=` add inputs), `--network`, heredocs handled as a current BuildKit does:

* `RUN <<EOF` alone: the body is run by the shell (`/bin/sh -c <body>`), quoted delimiter or
  not; a body starting with `#!` is written to an inline file mounted at /dev/pipes/ and run;
* a heredoc used inside a command (`RUN cat <<EOF > f`): the command line, a newline, each body
  and its delimiter are handed to the shell as one script, which does the heredoc itself.
"""
from __future__ import annotations

import posixpath
import re

from builder.solve.graph import Vertex
from builder.solve.ops import ExecOp, InlineFile, InlineSource, Mount

from . import instructions as I
from .convert_copy import SourceResolver
from .convert_state import StageState
from .parse import heredocs_in, join_heredoc_words
from .shell import split_raw_words

__all__ = ["dispatch_run", "parse_mount"]

_SIZE = re.compile(r"^(\d+)([kmg]?)b?$", re.I)
_BOOL_KEYS = {"readonly", "ro", "rw", "readwrite", "required"}


def _bool(st: StageState, c: I.Run, key: str, value: str | None) -> bool:
    if value is None:
        return True
    v = value.lower()
    if v in ("true", "1"):
        return True
    if v in ("false", "0"):
        return False
    raise st.error(c, f"invalid value for {key}: {value!r}")


def _int(st: StageState, c: I.Run, key: str, value: str, base: int = 10) -> int:
    try:
        return int(value, base)
    except ValueError:
        raise st.error(c, f"invalid value for {key}: {value!r}") from None


def _size(st: StageState, c: I.Run, value: str) -> int:
    m = _SIZE.match(value.strip())
    if not m:
        raise st.error(c, f"invalid tmpfs size {value!r}")
    return int(m.group(1)) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[m.group(2).lower()]


def _fields(st: StageState, c: I.Run, spec: str) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        k, eq, v = part.partition("=")
        k = k.strip().lower()
        if not eq and k not in _BOOL_KEYS:
            raise st.error(c, f"invalid field {part!r} in --mount (want key=value)")
        out[k] = (v.strip() if k == "from" else st.expand(c, v.strip())) if eq else None
    return out


def parse_mount(st: StageState, c: I.Run, spec: str, inputs: list[Vertex], sources: SourceResolver) -> Mount:
    """One `--mount=` spec as an ops.Mount; appends the vertices it reads to `inputs`."""
    f = _fields(st, c, spec)
    kind = (f.pop("type", None) or "bind").lower()
    if kind not in ("bind", "cache", "tmpfs", "secret", "ssh"):
        raise st.error(c, f"unsupported mount type {kind!r}")
    target = f.pop("target", None) or f.pop("dst", None) or f.pop("destination", None) or ""
    source = f.pop("source", None) or f.pop("src", None) or ""
    frm = f.pop("from", None) or ""
    mid = f.pop("id", None) or ""
    readonly, kw = _common_options(st, c, kind, f)
    env = f.pop("env", None) or ""
    if f:
        raise st.error(c, f"unexpected key {sorted(f)[0]!r} in --mount")
    if kind == "secret":
        if not mid and not target:
            raise st.error(c, "secret mount needs an id or a target")
        mid = mid or posixpath.basename(target)
        target = target or ("" if env else f"/run/secrets/{mid}")
        kw.setdefault("mode", 0o400)
        if target and _abs(st, target) == "/":
            raise st.error(c, 'invalid mount target "/"')
        return Mount(type="secret", target=_abs(st, target) if target else "", secret_id=mid, env=env,
                     readonly=True, **kw)
    if kind == "ssh":
        return Mount(type="ssh", target=_abs(st, target or "/run/buildkit/ssh_agent.0"), secret_id=mid or "default",
                     readonly=True, **{"mode": 0o600, **kw})
    target = _abs(st, target)       # no target: the working directory, as BuildKit
    if target == "/":
        raise st.error(c, 'invalid mount target "/"')
    if kind == "tmpfs":
        return Mount(type="tmpfs", target=target, readonly=False, **kw)
    idx = None
    if kind == "bind" or frm:
        base = sources.from_ref(st, c, frm) if frm else sources.context()
        inputs.append(base)
        idx = len(inputs) - 1
    src = "/" + posixpath.normpath("/" + source).lstrip("/") if source else "/"
    if kind == "cache":
        kw.setdefault("mode", 0o755)
        return Mount(type="cache", target=target, source=src if frm else "", input=idx, readonly=readonly,
                     cache_id=mid or target, **kw)
    return Mount(type="bind", target=target, source=src, input=idx, readonly=readonly, **kw)


def _common_options(st: StageState, c: I.Run, kind: str, f: dict[str, str | None]) -> tuple[bool, dict]:
    """readonly (default by mount type) and the keyword fields every mount type may set
    (sharing, mode, uid, gid, required, size); pops what it reads from `f`."""
    readonly = {"bind": True, "secret": True, "ssh": True}.get(kind, False)
    for k in ("readonly", "ro"):
        if k in f:
            readonly = _bool(st, c, k, f.pop(k))
    for k in ("rw", "readwrite"):
        if k in f:
            readonly = not _bool(st, c, k, f.pop(k))
    kw: dict = {}
    if "sharing" in f:
        kw["sharing"] = f.pop("sharing")
        if kw["sharing"] not in ("shared", "private", "locked"):
            raise st.error(c, f"unsupported cache sharing {kw['sharing']!r}")
    if "mode" in f:
        kw["mode"] = _int(st, c, "mode", f.pop("mode") or "", 8)
    for k in ("uid", "gid"):
        if k in f:
            kw[k] = _int(st, c, k, f.pop(k) or "")
    if "required" in f:
        kw["required"] = _bool(st, c, "required", f.pop("required"))
    if "size" in f:
        kw["size"] = _size(st, c, f.pop("size") or "")
    return readonly, kw


def _abs(st: StageState, path: str) -> str:
    return st.resolve_path(path)


def _heredoc_args(st: StageState, c: I.Run, inputs: list[Vertex], mounts: list[Mount]) -> list[str]:
    text = c.command.args[0] if c.command.args else ""
    words = join_heredoc_words(split_raw_words(text))
    if len(words) == 1 and heredocs_in(text) and len(c.heredocs) == 1:
        doc = c.heredocs[0]
        data = doc.content
        if doc.chomp:
            data = "\n".join(l.lstrip("\t") for l in data.split("\n"))
        if data.startswith("#!"):
            v = Vertex(op=InlineSource(files=(InlineFile(name=doc.name, data=data.encode("utf-8", "surrogateescape"),
                                                         mode=0o755),)),
                       name="preparing inline document", source_location=st.location(c))
            inputs.append(v)
            mounts.append(Mount(type="bind", target="/dev/pipes/", source="/", input=len(inputs) - 1, readonly=True))
            return [f"/dev/pipes/{doc.name}"]
        return [data]
    full = text
    for doc in c.heredocs:
        full += "\n" + doc.content + doc.name
    return [full]


def dispatch_run(st: StageState, c: I.Run, sources: SourceResolver) -> None:
    inputs: list[Vertex] = [st.vertex]
    mounts = [parse_mount(st, c, m, inputs, sources) for m in c.mounts]
    if c.security and c.security != "sandbox":
        raise st.error(c, f"--security={c.security} is not supported (rootless builder)")
    if c.heredocs:
        args = _heredoc_args(st, c, inputs, mounts)
        shell_form = True
    else:
        args = list(c.command.args)
        shell_form = not c.command.json
    if not args:
        raise st.error(c, "RUN requires at least one argument")
    full = [*st.shell, *args] if shell_form else args
    op = ExecOp(args=tuple(full), env=st.run_env(), proxy_env=st.proxy_env(), cwd=st.workdir,
                user=st.config.user, mounts=tuple(mounts), network=(c.network or "default"))  # type: ignore[arg-type]
    created = "RUN " + st.run_args_prefix() + " ".join(full) + " # buildkit"
    st.vertex = st.vertex_for(c, op, tuple(inputs), created)
    st.record(created, st.vertex)
