"""Dispatch of COPY and ADD: one FileOp vertex over the stage's root (input 0) whose Copy actions
read from the build context, another stage, an image, a named context, HTTPSource vertices (ADD
URL) or an InlineSource vertex (heredocs)."""
from __future__ import annotations

import posixpath
import re
from typing import Any, Protocol
from urllib.parse import urlparse

from builder.solve.graph import Vertex
from builder.solve.ops import Chown, Copy, FileOp, HTTPSource, InlineFile, InlineSource

from . import instructions as I
from .convert_state import StageState

__all__ = ["SourceResolver", "dispatch_copy", "context_path", "parse_chown", "parse_chmod"]


class SourceResolver(Protocol):
    """What COPY/RUN need from the converter: the main context and `--from` references."""

    def context(self) -> Vertex: ...

    def from_ref(self, st: StageState, ins: I.Instruction, ref: str) -> Vertex: ...


def context_path(src: str, *, parents: bool = False) -> str:
    """A source path cleaned and clamped to the root of its input ("../x" -> "x", "/" -> ".").
    With --parents a `/./` pivot is kept."""
    def clean(p: str) -> str:
        out = posixpath.normpath("/" + p).lstrip("/")
        return out or "."
    if parents:
        body = src
        while body.startswith("./"):
            body = body[2:]
        if "/./" in body:
            head, _, tail = body.partition("/./")
            return clean(head) + "/./" + clean(tail)
    return clean(src)


def parse_chown(st: StageState, c: I.Instruction, spec: str) -> Chown | None:
    if not spec:
        return None
    # An empty user or group (":gid", or `${A}:${B}` with both unset) means 0, as in BuildKit.
    user, _, group = st.expand(c, spec).partition(":")
    return Chown(user=user, group=group)


_SYMBOLIC_CLAUSE = re.compile(r"[ugoa]*(?:[-+=](?:[rwxXst]*|[ugo]))+")


def parse_chmod(st: StageState, c: I.Instruction, spec: str) -> int | str | None:
    """The --chmod of COPY/ADD as dockerfile 1.19 reads it: digits are an octal mode up to 07777
    (setuid/setgid/sticky kept), anything else a symbolic mode (`u+x,go=rX`, returned as the
    string, applied per entry by the file op); an invalid one is an error."""
    if not spec:
        return None
    if spec.isascii() and spec.isdigit():
        mode = int(spec, 8) if set(spec) <= set("01234567") else -1
        if not 0 <= mode <= 0o7777:
            raise st.error(c, f"invalid chmod parameter: '{spec}'. it should be octal string and between 0 and 07777")
        return mode
    if not all(_SYMBOLIC_CLAUSE.fullmatch(part) for part in spec.split(",")):
        raise st.error(c, f"invalid chmod parameter: '{spec}': invalid syntax")
    return spec


def _is_url(src: str) -> bool:
    return src.startswith("http://") or src.startswith("https://")


def _is_git(src: str) -> bool:
    """BuildKit's git-source detection: git:// and git@ remotes, github.com/ shorthands, and URLs
    whose path ends in .git (optionally with a #ref fragment)."""
    if src.startswith(("git://", "git@", "github.com/")):
        return True
    if _is_url(src):
        return src.partition("#")[0].rstrip("/").endswith(".git")
    return False


def _url_filename(url: str) -> str:
    base = posixpath.basename(urlparse(url).path.rstrip("/"))
    return base if base not in ("", ".", "..", "/") else "__unnamed__"


def _dest(st: StageState, c: I.Copy, raw: str) -> str:
    dest = st.resolve_path(raw)
    if (raw in ("", ".") or raw.endswith(("/", "/."))) and not dest.endswith("/"):
        dest += "/"
    return dest


class _Inputs:
    def __init__(self, root: Vertex) -> None:
        self.vertices: list[Vertex] = [root]

    def index(self, v: Vertex) -> int:
        for i, x in enumerate(self.vertices):
            if x is v:
                return i
        self.vertices.append(v)
        return len(self.vertices) - 1


def dispatch_copy(st: StageState, c: I.Copy, sources: SourceResolver) -> None:
    kw = "ADD" if c.is_add else "COPY"
    srcs = [st.expand(c, s) for s in c.sources]
    dest = _dest(st, c, st.expand(c, c.dest))
    chown = parse_chown(st, c, c.chown)
    chmod = parse_chmod(st, c, st.expand(c, c.chmod))
    excludes = tuple(c.exclude)      # never expanded: dockerfile 1.19 takes `--exclude=$X` literally
    checksum = st.expand(c, c.checksum)
    if checksum and len(srcs) != 1:
        raise st.error(c, "checksum can't be specified for multiple sources")
    if checksum and not all(_is_url(s) for s in srcs):
        raise st.error(c, "checksum can't be specified for non-HTTP(S) sources")
    if checksum and not checksum.startswith("sha256:"):
        raise st.error(c, f"unsupported checksum {checksum!r} (want sha256:<hex>)")
    common: dict[str, Any] = dict(chown=chown, chmod=chmod if not isinstance(chmod, str) else None,
                                  chmod_symbolic=chmod if isinstance(chmod, str) else "",
                                  exclude=excludes, parents=c.parents, link=c.link)
    inputs = _Inputs(st.vertex)
    actions: list[Copy] = []
    local: list[str] = []
    for src in srcs:
        if c.is_add and _is_git(src):
            raise st.error(c, f"ADD from a git repository ({src}) is not supported yet")
        if c.is_add and _is_url(src):
            name = _url_filename(src)
            v = Vertex(op=HTTPSource(url=src, filename=name, checksum=checksum), name=f"{kw} {src}",
                       source_location=st.location(c))
            actions.append(Copy(src=inputs.index(v), src_paths=(name,), dest=dest, **common))
        else:
            local.append(context_path(src, parents=c.parents))
    if local:
        base = sources.from_ref(st, c, c.from_) if c.from_ else sources.context()
        actions.insert(0, Copy(src=inputs.index(base), src_paths=tuple(local), dest=dest, unpack=c.is_add,
                               **common))
    if c.inline:
        files = tuple(InlineFile(name=d.name, data=_heredoc_data(st, c, d).encode("utf-8", "surrogateescape"),
                                 mode=0o644) for d in c.inline)
        v = Vertex(op=InlineSource(files=files), name="preparing inline document", source_location=st.location(c))
        idx = inputs.index(v)
        actions.extend(Copy(src=idx, src_paths=(f.name,), dest=dest, **common) for f in files)
    if not actions:
        raise st.error(c, f"{kw} has no source")
    created = f"{kw} " + " ".join([*srcs, *(f"<<{d.name}" for d in c.inline), st.expand(c, c.dest)]) + " # buildkit"
    st.vertex = st.vertex_for(c, FileOp(actions=tuple(actions)), tuple(inputs.vertices), created)
    st.record(created, st.vertex)


def _heredoc_data(st: StageState, c: I.Copy, doc) -> str:  # type: ignore[no-untyped-def]
    data = doc.content
    if doc.chomp:
        data = "\n".join(l.lstrip("\t") for l in data.split("\n"))
    if doc.expand:
        data = st.expand(c, data, skip_quotes=True)
    return data
