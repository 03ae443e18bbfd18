"""Build operations: frozen data, no behaviour (the runner gives them behaviour).

A vertex holds one op and a tuple of input vertices. Every op renders to canonical JSON with
`op_json()`; the vertex digest and the cache map are computed from that, so every field that
changes the result must be here, and nothing that does not (names, Dockerfile lines).

Inputs by op:
- sources (ImageSource, ScratchSource, LocalSource, OCILayoutSource, HTTPSource, InlineSource): none.
- ExecOp: input 0 is the root filesystem; Mount.input indexes further inputs (bind mounts `from=`).
- FileOp: input 0 is the root filesystem being changed; Copy.src indexes the input copied from.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, Union

from builder.image.digest import Digest
from builder.image.oci import Platform

# Build args that set a step's proxies (BuildKit's ProxyEnv): given to RUN steps, never in a cache
# key or the image, and not declared by ARG.
PROXY_ARGS = ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "FTP_PROXY", "ftp_proxy",
              "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy")


def _jsonable(v: Any) -> Any:
    if isinstance(v, Digest):
        return str(v)
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        d = {f.name: _jsonable(getattr(v, f.name)) for f in dataclasses.fields(v)}
        d["@type"] = type(v).__name__
        return d
    if isinstance(v, (tuple, list)):
        return [_jsonable(x) for x in v]
    if isinstance(v, bytes):
        return {"@bytes": v.hex()}
    return v


class _Op:
    __slots__ = ()

    def op_json(self) -> Any:
        """Canonical JSON-able form of the op (used for vertex digests and cache maps)."""
        return _jsonable(self)


# ---------------------------------------------------------------- sources

@dataclass(frozen=True, slots=True, kw_only=True)
class ImageSource(_Op):
    """An image from a registry (or pybuild's local store). `ref` is the normalized reference;
    `digest` is the manifest digest the frontend's resolver pinned (so the vertex changes when the
    image does)."""
    ref: str
    digest: Digest
    platform: Platform


@dataclass(frozen=True, slots=True, kw_only=True)
class ScratchSource(_Op):
    """The empty filesystem."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalSource(_Op):
    """A host directory: the build context ("context") or a named `--build-context NAME=DIR`.
    The directory path is bound at solve time (BuildRequest), not part of the op. `excludes` are
    .dockerignore patterns. Cache keys come from the content of the files a COPY selects."""
    name: str
    excludes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class OCILayoutSource(_Op):
    """An image inside an OCI layout directory (`--build-context NAME=oci-layout://DIR[:TAG]`)."""
    path: str
    tag: str
    digest: Digest
    platform: Platform


@dataclass(frozen=True, slots=True, kw_only=True)
class HTTPSource(_Op):
    """A file downloaded over HTTP(S) (ADD URL). Result: a directory holding one file `filename`
    with mode `chmod` (default 0600), owned 0:0."""
    url: str
    filename: str
    checksum: str = ""          # "sha256:..." required digest of the body, if given
    chmod: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class InlineFile:
    name: str
    data: bytes
    mode: int = 0o644


@dataclass(frozen=True, slots=True, kw_only=True)
class InlineSource(_Op):
    """Files given inline (COPY <<EOF heredocs). Result: a directory holding these files, 0:0."""
    files: tuple[InlineFile, ...]


# ---------------------------------------------------------------- exec

@dataclass(frozen=True, slots=True, kw_only=True)
class Mount(_Op):
    """A RUN --mount. `input` indexes the ExecOp's inputs for bind mounts with a source
    (None: the build context input must still be given by the frontend)."""
    type: Literal["bind", "cache", "tmpfs", "secret", "ssh"]
    target: str
    source: str = ""
    input: int | None = None
    readonly: bool = True
    cache_id: str = ""
    sharing: Literal["shared", "private", "locked"] = "shared"
    secret_id: str = ""
    env: str = ""                # secret exposed as this env var instead of (or as well as) a file
    required: bool = False
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    size: int = 0                # tmpfs size in bytes, 0 = unlimited


@dataclass(frozen=True, slots=True, kw_only=True)
class ExecOp(_Op):
    """Run a process in the sandbox over input 0. `user` is as in USER (`name`, `uid`,
    `name:group`, `uid:gid`); the runner resolves it against the rootfs /etc/passwd and /etc/group."""
    args: tuple[str, ...]
    env: tuple[str, ...]
    cwd: str = "/"
    user: str = ""
    mounts: tuple[Mount, ...] = ()
    network: Literal["default", "none", "host"] = "default"
    proxy_env: tuple[str, ...] = ()   # proxy build args (HTTP_PROXY=…): in the step's env, never in its cache key


# ---------------------------------------------------------------- file ops

@dataclass(frozen=True, slots=True, kw_only=True)
class Chown(_Op):
    """Owner spec as written (`app`, `app:staff`, `1000:50`); resolved against the destination
    rootfs /etc/passwd and /etc/group (unknown names give 0, as BuildKit 20.10 does)."""
    user: str
    group: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Copy(_Op):
    """Copy `src_paths` (relative to the root of input `src`, may hold wildcards) to `dest`
    (absolute; a trailing "/" means "into this directory").

    Semantics follow BuildKit's copy: a directory source copies its contents; several sources or a
    trailing slash make dest a directory; a symlink source at the top is followed (follow_symlinks)
    and copied as its target; dest symlinks in parent path components are followed inside the root.
    """
    src: int
    src_paths: tuple[str, ...]
    dest: str
    chown: Chown | None = None
    chmod: int | None = None
    chmod_symbolic: str = ""        # --chmod=u+x,go=rX: applied to each entry's own mode
    unpack: bool = False            # ADD: extract local tar archives
    exclude: tuple[str, ...] = ()
    parents: bool = False
    follow_symlinks: bool = True
    allow_wildcard: bool = True
    allow_empty_wildcard: bool = True
    create_dest_path: bool = True
    link: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Mkdir(_Op):
    path: str
    mode: int = 0o755
    make_parents: bool = True
    chown: Chown | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Mkfile(_Op):
    path: str
    data: bytes
    mode: int = 0o644
    chown: Chown | None = None


FileAction = Union[Copy, Mkdir, Mkfile]


@dataclass(frozen=True, slots=True, kw_only=True)
class FileOp(_Op):
    actions: tuple[FileAction, ...]


SourceOpT = Union[ImageSource, ScratchSource, LocalSource, OCILayoutSource, HTTPSource, InlineSource]
Op = Union[SourceOpT, ExecOp, FileOp]
