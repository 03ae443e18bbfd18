"""The solver: runs a BuildGraph in parallel with a content-addressed cache.

Generic over ops: each vertex's behaviour comes from its runner (`builder.solve.runner`). A vertex
runs once all its inputs are done; independent vertices (e.g. stages) run at the same time on a
thread pool. A vertex whose runner gives a cache map gets a cache key (builder.solve.cache); a hit
reuses the recorded layer without running anything, a miss runs the op and records the layer with
the time it really ran.
"""
from __future__ import annotations

import concurrent.futures as cf
import datetime as _dt
import threading
from dataclasses import dataclass, field
from typing import Callable

from builder.errors import BuildCancelled, PybuildError, StepError
from builder.image.digest import Digest
from builder.progress import ProgressSink, VertexEvent, null_sink
from builder.solve.cache import CacheIndex, CacheKey, CacheMap, CacheRecord, cache_key
from builder.solve.explain import MissExplainer
from builder.solve.graph import BuildGraph, Vertex
from builder.solve.results import Result, RootfsResult, StepInfo
from builder.solve.runner import Runner, RunnerRegistry
from builder.store.content import ContentStore


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


@dataclass(frozen=True, kw_only=True)
class SolveOptions:
    no_cache: bool = False
    max_parallel: int = 4
    progress: ProgressSink = null_sink
    clock: Callable[[], _dt.datetime] = _now
    on_cancel: Callable[[], None] = field(default=lambda: None)   # e.g. kill the running steps


def rfc3339(t: _dt.datetime) -> str:
    return t.astimezone(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Solver:
    """One solve of one graph. `steps` (vertex digest → StepInfo) is filled for cached ops."""

    def __init__(self, *, runners: RunnerRegistry, store: ContentStore, cache: CacheIndex,
                 explainer: MissExplainer, options: SolveOptions) -> None:
        self._runners = runners
        self._store = store
        self._cache = cache
        self._why = explainer
        self._opts = options
        self._results: dict[Digest, Result] = {}
        self.steps: dict[Digest, StepInfo] = {}
        self._lock = threading.Lock()
        self._cancelled = threading.Event()

    # ------------------------------------------------------------------ scheduling
    def solve(self, graph: BuildGraph) -> Result:
        """Run every vertex the target needs; return the target's result. Raises StepError with
        the failing vertex's Dockerfile location and digest, or BuildCancelled."""
        g = graph.graph
        pending = {d: set(g.predecessors(d)) for d in g.nodes}
        running: dict[cf.Future[Result], Digest] = {}
        with cf.ThreadPoolExecutor(max_workers=self._opts.max_parallel, thread_name_prefix="solve") as pool:
            try:
                while pending or running:
                    for d in sorted(d for d, deps in pending.items() if not deps):
                        del pending[d]
                        running[pool.submit(self._run_vertex, graph.vertex(d))] = d
                    if not running:
                        raise PybuildError("build graph has a cycle")
                    done, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
                    for fut in done:
                        d = running.pop(fut)
                        self._results[d] = fut.result()
                        for deps in pending.values():
                            deps.discard(d)
            except BaseException:
                self._cancelled.set()
                for fut in running:
                    fut.cancel()
                self._opts.on_cancel()
                raise
        return self._results[graph.target.vertex.digest]

    def cancel(self) -> None:
        self._cancelled.set()
        self._opts.on_cancel()

    # ------------------------------------------------------------------ per vertex
    def _run_vertex(self, v: Vertex) -> Result:
        if self._cancelled.is_set():
            raise BuildCancelled("build cancelled")
        try:
            runner = self._runners.get(v.op)
            inputs = [self._results[i.digest] for i in v.inputs]
            cm = runner.cache_map(v, inputs)
            if cm is None:
                return self._run_uncached(v, runner, inputs)
            return self._run_cached(v, runner, inputs, cm)
        except (StepError, BuildCancelled):
            raise
        except PybuildError as e:
            loc = str(v.source_location) if v.source_location else None
            self._opts.progress(VertexEvent(vertex=v.digest, name=v.name, status="error", error=str(e)))
            raise StepError(f"{_short(v.name)}: {e}", location=loc, vertex=str(v.digest), cause=e) from e

    def _run_uncached(self, v: Vertex, runner: Runner, inputs: list[Result]) -> Result:
        if runner.announce:
            self._event(v, "started")
        result = runner.run(v, inputs, None)
        if runner.announce:
            self._event(v, "done")
        return result

    def _run_cached(self, v: Vertex, runner: Runner, inputs: list[Result], cm: CacheMap) -> Result:
        base = inputs[0] if inputs else None
        if not isinstance(base, RootfsResult):
            raise PybuildError(f"{v.name}: input 0 is not a root filesystem")
        key = cache_key(cm)
        hit = self._lookup(key)
        if hit is not None:
            self._event(v, "cached")
            self._record_step(v, StepInfo(created=hit.created, layer=hit.layer, cached=True))
            return RootfsResult(key=key, chain=base.chain + ((hit.layer,) if hit.layer else ()))
        reason = "--no-cache" if self._opts.no_cache else self._why.explain(v.name, cm)
        self._why.remember(v.name, cm)
        self._opts.progress(VertexEvent(vertex=v.digest, name=v.name, status="started", reason=reason))
        created = rfc3339(self._opts.clock())
        result = runner.run(v, inputs, key)
        if not isinstance(result, RootfsResult) or result.chain[:len(base.chain)] != base.chain \
                or len(result.chain) > len(base.chain) + 1:
            raise PybuildError(f"{v.name}: the runner did not add at most one layer to its input")
        layer = result.chain[-1] if len(result.chain) > len(base.chain) else None
        self._cache.put(CacheRecord(key=key, layer=layer, created=created, description=v.name))
        self._record_step(v, StepInfo(created=created, layer=layer, cached=False))
        self._event(v, "done")
        return RootfsResult(key=key, chain=result.chain)

    def _lookup(self, key: CacheKey) -> CacheRecord | None:
        if self._opts.no_cache:
            return None
        rec = self._cache.get(key)
        if rec is not None and (rec.layer is None or self._store.has(rec.layer.descriptor.digest)):
            return rec
        return None

    def _record_step(self, v: Vertex, info: StepInfo) -> None:
        with self._lock:
            self.steps[v.digest] = info

    def _event(self, v: Vertex, status: str) -> None:
        self._opts.progress(VertexEvent(vertex=v.digest, name=v.name, status=status))  # type: ignore[arg-type]


def _short(name: str) -> str:
    return name if len(name) < 120 else name[:117] + "..."
