"""RUN: the exec op's cache map and its run in the sandbox."""
from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

from builder.errors import PybuildError
from builder.progress import LogEvent, ProgressSink
from builder.sandbox.executor import Executor
from builder.solve.cache import CacheKey, CacheMap, op_digest
from builder.solve.graph import Vertex
from builder.solve.ops import ExecOp
from builder.solve.results import Result, RootfsResult
from builder.solve.selection import Checksummer, Selection, input_deps, step_sources


def exec_op(v: Vertex) -> ExecOp:
    if not isinstance(v.op, ExecOp):
        raise PybuildError(f"{v.name}: not an exec op")
    return v.op


def with_proxies(op: ExecOp) -> ExecOp:
    """The op as the sandbox runs it: the proxy build args join the environment and win over a
    variable of the same name the Dockerfile sets (BuildKit's ProxyEnv)."""
    if not op.proxy_env:
        return op
    names = {p.partition("=")[0] for p in op.proxy_env}
    kept = tuple(e for e in op.env if e.partition("=")[0] not in names)
    return dataclasses.replace(op, env=kept + op.proxy_env, proxy_env=())


class ExecRunner:
    """Keys: the command, env, user, workdir, network and mounts' definitions (not the proxy
    build args: CI runners behind different proxies share the cache), the parent's key, and the
    content of what bind mounts select from directory inputs."""

    announce = False

    def __init__(self, *, executor: Executor, secrets: Mapping[str, bytes], checksum: Checksummer,
                 progress: ProgressSink) -> None:
        self._executor = executor
        self._secrets = secrets
        self._checksum = checksum
        self._progress = progress

    def cache_map(self, v: Vertex, inputs: Sequence[Result]) -> CacheMap:
        op = exec_op(v)
        sels: dict[int, list[Selection]] = {}
        for m in op.mounts:
            if m.input is not None:
                sels.setdefault(m.input, []).append(Selection(paths=(m.source or ".",)))
        own = op_digest(dataclasses.replace(op, proxy_env=()).op_json())
        return CacheMap(digest=own, deps=input_deps(inputs, sels, self._checksum))

    def run(self, v: Vertex, inputs: Sequence[Result], key: CacheKey | None) -> Result:
        op = exec_op(v)
        base = inputs[0]
        if not isinstance(base, RootfsResult) or key is None:
            raise PybuildError(f"{v.name}: RUN needs a root filesystem and a cache key")
        read = {m.input for m in op.mounts if m.input is not None}

        def output(data: bytes) -> None:
            self._progress(LogEvent(vertex=v.digest, name=v.name, data=data))
        layer = self._executor.run_exec(base=base.chain, op=with_proxies(op),
                                        mount_sources=step_sources(inputs, read),
                                        secrets=self._secrets, output=output)
        return RootfsResult(key=key, chain=base.chain + ((layer,) if layer else ()))
