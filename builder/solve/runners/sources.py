"""Source ops: scratch, images (resolved before the solve and handed over as values), local
directories, files fetched over HTTP(S), inline files. Sources are not kept in the cache index:
each build resolves them; their keys come from the op and, for fetched files, the content."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Mapping, Sequence

from builder.errors import PybuildError, SourceError
from builder.image.digest import Digest
from builder.image.view import Chain, HostDir
from builder.solve.cache import CacheKey, op_digest
from builder.solve.graph import Vertex
from builder.solve.ops import HTTPSource, ImageSource, InlineSource, LocalSource, OCILayoutSource
from builder.solve.results import DirResult, Result, RootfsResult

Fetch = Callable[[str, BinaryIO], tuple[Digest, int]]     # url, sink -> (sha256 digest, size)


def source_key(v: Vertex, content: str = "") -> CacheKey:
    return CacheKey.of(f"{op_digest(v.op.op_json())}{content}".encode())


class _SourceRunner:
    """Sources are not kept in the cache index (no cache map); quiet unless `announce`."""

    announce = False

    def cache_map(self, v: Vertex, inputs: Sequence[Result]) -> None:
        return None


class ScratchRunner(_SourceRunner):
    def run(self, v: Vertex, inputs: Sequence[Result], key: CacheKey | None) -> Result:
        return RootfsResult(key=source_key(v), chain=())


class ImageRunner(_SourceRunner):
    """Images (registry, store or OCI layout) by manifest digest, as the resolver left them."""

    announce = True

    def __init__(self, resolved: Mapping[Digest, Chain]) -> None:
        self._resolved = resolved

    def run(self, v: Vertex, inputs: Sequence[Result], key: CacheKey | None) -> Result:
        if not isinstance(v.op, (ImageSource, OCILayoutSource)):
            raise PybuildError(f"{v.name}: not an image source")
        chain = self._resolved.get(Digest.parse(str(v.op.digest)))
        if chain is None:
            raise PybuildError(f"image {v.op.digest} was not resolved")
        return RootfsResult(key=source_key(v), chain=chain)


class LocalRunner(_SourceRunner):
    """The build context and named local contexts: the directory paths are bound per build."""

    def __init__(self, contexts: Mapping[str, Path]) -> None:
        self._contexts = contexts

    def run(self, v: Vertex, inputs: Sequence[Result], key: CacheKey | None) -> Result:
        if not isinstance(v.op, LocalSource):
            raise PybuildError(f"{v.name}: not a local source")
        path = self._contexts.get(v.op.name)
        if path is None:
            raise PybuildError(f"no directory given for build context {v.op.name!r}")
        return DirResult(key=source_key(v), dir=HostDir(path=path, excludes=v.op.excludes))


class InlineRunner(_SourceRunner):
    """Heredoc files, written into a fresh directory under `tmp`."""

    def __init__(self, tmp: Path) -> None:
        self._tmp = tmp

    def run(self, v: Vertex, inputs: Sequence[Result], key: CacheKey | None) -> Result:
        if not isinstance(v.op, InlineSource):
            raise PybuildError(f"{v.name}: not an inline source")
        d = Path(tempfile.mkdtemp(dir=self._tmp, prefix="src-"))
        for f in v.op.files:
            p = d / f.name
            p.write_bytes(f.data)
            os.chmod(p, f.mode)
        return DirResult(key=source_key(v), dir=HostDir(path=d))


class HTTPRunner(_SourceRunner):
    """ADD <url>: fetched through the one hardened HTTP client into a fresh directory; the key
    includes the content's digest, and `--checksum` is verified."""

    announce = True

    def __init__(self, tmp: Path, fetch: Fetch) -> None:
        self._tmp = tmp
        self._fetch = fetch

    def run(self, v: Vertex, inputs: Sequence[Result], key: CacheKey | None) -> Result:
        op = v.op
        if not isinstance(op, HTTPSource):
            raise PybuildError(f"{v.name}: not an HTTP source")
        d = Path(tempfile.mkdtemp(dir=self._tmp, prefix="src-"))
        dest = d / op.filename
        with open(dest, "wb") as f:
            got, _ = self._fetch(op.url, f)
        if op.checksum and op.checksum != str(got):
            raise SourceError(f"{op.url}: checksum mismatch: expected {op.checksum}, got {got}")
        os.chmod(dest, op.chmod if op.chmod is not None else 0o600)
        return DirResult(key=source_key(v, str(got)), dir=HostDir(path=d))
