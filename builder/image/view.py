"""Layer and image views shared by the solver, the sandbox and the exporters.

A root filesystem is a `Chain`: its layers base first. Snapshot directories are keyed by the
OCI ChainID of a chain prefix, so any two builds that reach the same layers share snapshots.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence, Union

from builder.image.digest import Digest
from builder.image.oci import Descriptor, ImageConfig, Platform


@dataclass(frozen=True, slots=True, kw_only=True)
class LayerRef:
    """A layer whose compressed blob is in the content store."""
    descriptor: Descriptor
    diff_id: Digest


Chain = tuple[LayerRef, ...]


def chain_id(diff_ids: Sequence[Digest]) -> Digest:
    """OCI ChainID: ChainID(L0) = DiffID(L0); ChainID(L0..n) = sha256(ChainID(L0..n-1) + " " + DiffID(Ln))."""
    if not diff_ids:
        return Digest.of_bytes(b"")
    cur = str(diff_ids[0])
    for d in diff_ids[1:]:
        cur = "sha256:" + hashlib.sha256(f"{cur} {d}".encode()).hexdigest()
    return Digest.parse(cur)


@dataclass(frozen=True, slots=True, kw_only=True)
class HostDir:
    """A source directory on the host (build context, named context, downloaded or inline files).
    `excludes` are .dockerignore-style patterns relative to `path`."""
    path: Path
    excludes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class ChainSource:
    """A source that is another vertex's root filesystem."""
    chain: Chain


Source = Union[HostDir, ChainSource]


@dataclass(frozen=True, slots=True, kw_only=True)
class ResolvedImage:
    """What the frontend learns about a base image: pinned digest and config."""
    ref: str
    digest: Digest
    config: ImageConfig


class ImageResolver(Protocol):
    """Injected into the frontend (BuildKit's ResolveImageConfig): the frontend never talks to a
    registry or the store itself."""

    def resolve_image(self, ref: str, platform: Platform) -> ResolvedImage: ...

    def resolve_oci_layout(self, path: str, tag: str, platform: Platform) -> ResolvedImage: ...
