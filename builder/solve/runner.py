"""The runner contract: one runner per op type gives that op its behaviour.

The solver is generic over ops: it looks a vertex's runner up in a `RunnerRegistry` by the op's
type (never `isinstance` on op classes) and asks it two things:

- `cache_map(vertex, inputs)`: the op's cache map (its definition minus non-semantic fields, and
  per input the input's key plus the content hash of what it selects), or None for ops whose
  result is not kept in the cache index (sources: they are resolved anew by every build).
- `run(vertex, inputs, key)`: do the work. For a cached op (`key` is its cache key) the result is
  a `RootfsResult` whose chain is input 0's chain plus at most one new layer — that layer (or
  none) is what the solver records under `key`, and what a later hit appends to input 0 without
  running anything. For an uncached op (`key` is None) the runner returns the result with a key
  of its own (from the op and, where the op fetched something, its content).
"""
from __future__ import annotations

from typing import Protocol, Sequence

from builder.errors import PybuildError
from builder.solve.cache import CacheKey, CacheMap
from builder.solve.graph import Vertex
from builder.solve.results import Result


class Runner(Protocol):
    """Behaviour of one op type. `announce`: the solver reports started/done for uncached runs."""

    announce: bool

    def cache_map(self, v: Vertex, inputs: Sequence[Result]) -> CacheMap | None: ...

    def run(self, v: Vertex, inputs: Sequence[Result], key: CacheKey | None) -> Result: ...


class RunnerRegistry:
    """op type → runner. Frozen after construction by convention: register, then solve."""

    def __init__(self) -> None:
        self._by_type: dict[type, Runner] = {}

    def register(self, op_type: type, runner: Runner) -> "RunnerRegistry":
        self._by_type[op_type] = runner
        return self

    def get(self, op: object) -> Runner:
        runner = self._by_type.get(type(op))
        if runner is None:
            raise PybuildError(f"no runner for op {type(op).__name__}")
        return runner
