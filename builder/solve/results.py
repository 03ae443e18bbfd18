"""What solving a vertex gives: a root filesystem (a chain of layers) or a host directory, each
with the cache key that identifies it; and what the exporter needs to know about each step."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from builder.image.view import Chain, HostDir, LayerRef
from builder.solve.cache import CacheKey


@dataclass(frozen=True, slots=True, kw_only=True)
class RootfsResult:
    key: CacheKey
    chain: Chain


@dataclass(frozen=True, slots=True, kw_only=True)
class DirResult:
    key: CacheKey
    dir: HostDir


Result = Union[RootfsResult, DirResult]


@dataclass(frozen=True, slots=True, kw_only=True)
class StepInfo:
    """What the exporter needs for history: when the step ran and whether it made a layer."""
    created: str
    layer: LayerRef | None
    cached: bool
