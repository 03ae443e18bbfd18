"""Solve one build's graph: the runner for every op type, wired to this build's executor,
resolved images, context directories, checksum memo and HTTP client."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from builder.pipeline.env import BuildEnv
from builder.pipeline.validate import BuildPlan
from builder.image.digest import Digest
from builder.image.view import Chain, HostDir
from builder.sandbox.executor import Executor
from builder.solve import ops
from builder.solve.contenthash import ChecksumMemo, checksum_sources
from builder.solve.explain import MissExplainer
from builder.solve.graph import BuildGraph
from builder.solve.results import Result, StepInfo
from builder.solve.runner import RunnerRegistry
from builder.solve.runners.exec import ExecRunner
from builder.solve.runners.file import FileRunner
from builder.solve.runners.sources import (Fetch, HTTPRunner, ImageRunner, InlineRunner, LocalRunner,
                                           ScratchRunner)
from builder.solve.selection import Checksummer, Selection
from builder.solve.solver import SolveOptions, Solver


@dataclass(frozen=True, kw_only=True)
class Solved:
    result: Result
    steps: Mapping[Digest, StepInfo]


def checksummer(memo: ChecksumMemo) -> Checksummer:
    def checksum(d: HostDir, sel: Selection) -> Digest:
        return checksum_sources(d.path, sel.paths, excludes=d.excludes, copy_excludes=sel.excludes,
                                follow_top_symlinks=sel.follow_symlinks, memo=memo)
    return checksum


def runners(env: BuildEnv, plan: BuildPlan, images: Mapping[Digest, Chain], executor: Executor,
            fetch: Fetch) -> RunnerRegistry:
    req = env.req
    checksum = checksummer(ChecksumMemo(env.root / "checksums.json"))
    image = ImageRunner(images)
    return (RunnerRegistry()
            .register(ops.ScratchSource, ScratchRunner())
            .register(ops.ImageSource, image)
            .register(ops.OCILayoutSource, image)
            .register(ops.LocalSource, LocalRunner(plan.dirs))
            .register(ops.InlineSource, InlineRunner(env.tmp))
            .register(ops.HTTPSource, HTTPRunner(env.tmp, fetch))
            .register(ops.ExecOp, ExecRunner(executor=executor, secrets=req.secrets, checksum=checksum,
                                             progress=req.progress))
            .register(ops.FileOp, FileRunner(executor=executor, checksum=checksum)))


def solve_graph(env: BuildEnv, graph: BuildGraph, plan: BuildPlan, images: Mapping[Digest, Chain],
                executor: Executor, fetch: Fetch) -> Solved:
    req = env.req
    solver = Solver(runners=runners(env, plan, images, executor, fetch), store=env.store, cache=env.cache,
                    explainer=MissExplainer(env.root),
                    options=SolveOptions(no_cache=req.no_cache, progress=req.progress, on_cancel=executor.cancel))
    result = solver.solve(graph)
    return Solved(result=result, steps=dict(solver.steps))
