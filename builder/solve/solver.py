"""The solver: runs a BuildGraph in parallel with a content-addressed cache.

Generic over ops: behaviour comes from the injected `Worker` (exec/file ops) and loaders (images,
HTTP). A vertex runs once all its inputs are done; independent vertices (e.g. stages) run at the
same time on a thread pool. Each exec/file vertex gets a cache key (builder.solve.cache); a hit reuses
the recorded layer without running anything, a miss runs the op and records the layer with the
time it really ran.
"""
from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import datetime as _dt
import hashlib
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Protocol, Union

from builder.solve.cache import CacheDep, CacheIndex, CacheMap, CacheRecord, MissExplainer, cache_key, op_digest
from builder.errors import BuildCancelled, PybuildError, StepError
from builder.solve.graph import BuildGraph, Vertex
from builder.image.view import Chain, ChainSource, HostDir, LayerRef, Source
from builder.solve.ops import (ExecOp, FileOp, HTTPSource, ImageSource, InlineSource, LocalSource, OCILayoutSource,
                  ScratchSource, Copy)
from builder.progress import LogEvent, ProgressSink, VertexEvent, null_sink
from builder.store.content import ContentStore


@dataclass(frozen=True, slots=True, kw_only=True)
class RootfsResult:
    key: str
    chain: Chain


@dataclass(frozen=True, slots=True, kw_only=True)
class DirResult:
    key: str
    dir: HostDir


Result = Union[RootfsResult, DirResult]


@dataclass(frozen=True, slots=True, kw_only=True)
class StepInfo:
    """What the exporter needs for history: when the step ran and whether it made a layer."""
    created: str
    layer: LayerRef | None
    cached: bool


class OpWorker(Protocol):
    def run_exec(self, *, base: Chain, op: ExecOp, mount_sources: Mapping[int, Source],
                 secrets: Mapping[str, bytes], output: Callable[[bytes], None] | None = None) -> LayerRef | None: ...

    def run_file(self, *, base: Chain, op: FileOp, sources: Mapping[int, Source]) -> LayerRef | None: ...

    def cancel(self) -> None: ...


ImageLoader = Callable[[Union[ImageSource, OCILayoutSource]], Chain]
DirMaker = Callable[[Union[HTTPSource, InlineSource]], tuple[HostDir, str]]
Checksummer = Callable[[HostDir, tuple[str, ...]], str]


@dataclass(kw_only=True)
class SolveOptions:
    contexts: Mapping[str, Path]
    secrets: Mapping[str, bytes] = field(default_factory=dict)
    no_cache: bool = False
    max_parallel: int = 4
    progress: ProgressSink = null_sink
    clock: Callable[[], _dt.datetime] = lambda: _dt.datetime.now(_dt.timezone.utc)


def rfc3339(t: _dt.datetime) -> str:
    return t.astimezone(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Solver:
    def __init__(self, *, store: ContentStore, cache: CacheIndex, worker: OpWorker, load_image: ImageLoader,
                 make_dir: DirMaker, checksum: Checksummer, options: SolveOptions) -> None:
        self._store = store
        self._cache = cache
        self._why = MissExplainer(cache.dir.parent)
        self._worker = worker
        self._load_image = load_image
        self._make_dir = make_dir
        self._checksum = checksum
        self._opts = options
        self._results: dict[str, Result] = {}
        self.steps: dict[str, StepInfo] = {}
        self._lock = threading.Lock()
        self._cancelled = threading.Event()

    # ------------------------------------------------------------------ scheduling
    def solve(self, graph: BuildGraph) -> Result:
        """Run every vertex the target needs; return the target's result. Raises StepError with
        the failing vertex's Dockerfile location, or BuildCancelled."""
        g = graph.graph
        pending = {d: set(g.predecessors(d)) for d in g.nodes}
        running: dict[cf.Future[Result], str] = {}
        with cf.ThreadPoolExecutor(max_workers=self._opts.max_parallel, thread_name_prefix="solve") as pool:
            try:
                while pending or running:
                    ready = sorted(d for d, deps in pending.items() if not deps)
                    for d in ready:
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
                self._worker.cancel()
                raise
        return self._results[graph.target.vertex.digest]

    def cancel(self) -> None:
        self._cancelled.set()
        self._worker.cancel()

    # ------------------------------------------------------------------ per vertex
    def _run_vertex(self, v: Vertex) -> Result:
        if self._cancelled.is_set():
            raise BuildCancelled("build cancelled")
        try:
            return self._dispatch(v)
        except (StepError, BuildCancelled):
            raise
        except PybuildError as e:
            loc = str(v.source_location) if v.source_location else None
            self._opts.progress(VertexEvent(vertex=v.digest, name=v.name, status="error", error=str(e)))
            raise StepError(f"{_short(v.name)}: {e}", location=loc, cause=e) from e

    def _dispatch(self, v: Vertex) -> Result:
        op = v.op
        own = op_digest(op.op_json())
        if isinstance(op, ScratchSource):
            return RootfsResult(key=_hash(own), chain=())
        if isinstance(op, (ImageSource, OCILayoutSource)):
            self._event(v, "started")
            chain = self._load_image(op)
            self._event(v, "done")
            return RootfsResult(key=_hash(own), chain=chain)
        if isinstance(op, LocalSource):
            path = self._opts.contexts.get(op.name)
            if path is None:
                raise PybuildError(f"no directory given for build context {op.name!r}")
            return DirResult(key=_hash(own), dir=HostDir(path=path, excludes=op.excludes))
        if isinstance(op, (HTTPSource, InlineSource)):
            self._event(v, "started")
            d, content = self._make_dir(op)
            self._event(v, "done")
            return DirResult(key=_hash(own + content), dir=d)
        if isinstance(op, ExecOp):
            return self._run_cached(v, op_digest(_without_proxy_env(op).op_json()))
        if isinstance(op, FileOp):
            return self._run_cached(v, own)
        raise PybuildError(f"unsupported op {type(op).__name__}")

    def _inputs(self, v: Vertex) -> list[Result]:
        return [self._results[i.digest] for i in v.inputs]

    def _cache_map(self, v: Vertex, own: str, inputs: list[Result]) -> CacheMap:
        selectors: dict[int, list[str]] = {}
        if isinstance(v.op, FileOp):
            for a in v.op.actions:
                if isinstance(a, Copy):
                    selectors.setdefault(a.src, []).extend(a.src_paths)
        elif isinstance(v.op, ExecOp):
            for m in v.op.mounts:
                if m.input is not None:
                    selectors.setdefault(m.input, []).append(m.source or ".")
        deps = []
        for idx, r in enumerate(inputs):
            if isinstance(r, DirResult) and idx in selectors:
                sel = tuple(selectors[idx])
                deps.append(CacheDep(key=r.key, selector=sel, content=self._checksum(r.dir, sel)))
            else:
                deps.append(CacheDep(key=r.key))
        return CacheMap(digest=own, deps=tuple(deps))

    def _run_cached(self, v: Vertex, own: str) -> Result:
        inputs = self._inputs(v)
        base = inputs[0]
        if not isinstance(base, RootfsResult):
            raise PybuildError(f"{v.name}: input 0 is not a root filesystem")
        cm = self._cache_map(v, own, inputs)
        key = cache_key(cm)
        if not self._opts.no_cache:
            rec = self._cache.get(key)
            if rec is not None and (rec.layer is None or self._store.has(rec.layer.descriptor.digest)):
                self._event(v, "cached")
                with self._lock:
                    self.steps[v.digest] = StepInfo(created=rec.created, layer=rec.layer, cached=True)
                return RootfsResult(key=key, chain=base.chain + ((rec.layer,) if rec.layer else ()))
        reason = "--no-cache" if self._opts.no_cache else self._why.explain(v.name, cm)
        self._why.remember(v.name, cm)
        self._opts.progress(VertexEvent(vertex=v.digest, name=v.name, status="started", reason=reason))
        created = rfc3339(self._opts.clock())
        sources: dict[int, Source] = {}
        for idx, r in enumerate(inputs[1:], start=1):
            sources[idx] = r.dir if isinstance(r, DirResult) else ChainSource(chain=r.chain)
        if isinstance(v.op, (ExecOp, FileOp)) and 0 in _source_indexes(v.op):
            # e.g. `FROM p` then `COPY --from=p`: the copy source is the root filesystem itself
            # (the vertex has one input); it is read from an unchanged view of the base.
            sources[0] = ChainSource(chain=base.chain)
        if isinstance(v.op, ExecOp):
            def output(data: bytes, _v: Vertex = v) -> None:
                self._opts.progress(LogEvent(vertex=_v.digest, name=_v.name, data=data))
            layer = self._worker.run_exec(base=base.chain, op=v.op, mount_sources=sources,
                                          secrets=self._opts.secrets, output=output)
        else:
            assert isinstance(v.op, FileOp)
            layer = self._worker.run_file(base=base.chain, op=v.op, sources=sources)
        self._cache.put(CacheRecord(key=key, layer=layer, created=created, description=v.name))
        with self._lock:
            self.steps[v.digest] = StepInfo(created=created, layer=layer, cached=False)
        self._event(v, "done")
        return RootfsResult(key=key, chain=base.chain + ((layer,) if layer else ()))

    def _event(self, v: Vertex, status: str) -> None:
        self._opts.progress(VertexEvent(vertex=v.digest, name=v.name, status=status))  # type: ignore[arg-type]


def _source_indexes(op: ExecOp | FileOp) -> set[int]:
    """Inputs an op reads as sources (Copy.src, bind mount inputs)."""
    if isinstance(op, FileOp):
        return {a.src for a in op.actions if isinstance(a, Copy)}
    return {m.input for m in op.mounts if m.input is not None}


PROXY_VARS = frozenset(f"{p}_PROXY" for p in ("HTTP", "HTTPS", "FTP", "NO", "ALL")) | \
    frozenset(f"{p}_proxy" for p in ("http", "https", "ftp", "no", "all"))


def _without_proxy_env(op: ExecOp) -> ExecOp:
    """Proxy settings change how a step reaches the network, not what it builds: BuildKit keeps
    them out of cache keys, so CI runners behind different proxies share the cache."""
    env = tuple(e for e in op.env if e.partition("=")[0] not in PROXY_VARS)
    return op if env == op.env else dataclasses.replace(op, env=env)


def _hash(s: str) -> str:
    return hashlib.sha256(s.encode()).hexdigest()


def _short(name: str) -> str:
    return name if len(name) < 120 else name[:117] + "..."
