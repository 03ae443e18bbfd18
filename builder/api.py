"""build(request) -> BuildResult: wires frontend → solver → exporters. No printing here.

Order: the request is checked first (nothing is created for a bad one); then the build's env
(store, cache, temp dir) opens and the sandbox worker starts booting in the background while the
frontend parses the Dockerfile and resolves its images; the solver runs the graph with one runner
per op type; the exporters write every output from the one solved image."""
from __future__ import annotations

from typing import TYPE_CHECKING

from builder.pipeline.env import BuildEnv
from builder.pipeline.lazyworker import LazyWorker
from builder.pipeline.validate import BuildPlan, check_request
from builder.errors import PybuildError
from builder.image.oci import Compression
from builder.request import BuildRequest, BuildResult, OutputSpec
from builder.sandbox.client import SandboxOptions, Worker

if TYPE_CHECKING:     # imported after the worker starts booting: start-up overlaps them
    from builder.pipeline.resolver import SourceResolver
    from builder.solve.graph import BuildGraph

__all__ = ["build", "BuildRequest", "BuildResult", "OutputSpec"]


def build(request: BuildRequest) -> BuildResult:
    """Build the request's Dockerfile. Raises UsageError for a bad request (before anything is
    created), DockerfileError / StepError / RegistryError / ... (PybuildError) otherwise."""
    plan = check_request(request)
    with BuildEnv(request, registry_config=plan.registry) as env:
        worker = LazyWorker(lambda: _worker(env, request))
        env.stack.callback(worker.close)
        worker.prestart()
        return _build(plan, request, env, worker)


def _build(plan: BuildPlan, request: BuildRequest, env: BuildEnv, worker: LazyWorker) -> BuildResult:
    from builder.pipeline.config import image_config
    from builder.pipeline.resolver import SourceResolver
    from builder.pipeline.solve import solve_graph
    from builder.pipeline.push import registry_pusher
    from builder.pipeline.metadata import build_metadata
    from builder.export.dispatch import ExportInput, export_all
    from builder.solve.results import RootfsResult
    resolver = SourceResolver(store=env.store, registry=env.registry, pull=request.pull)
    graph = _graph(plan, request, resolver)
    solved = solve_graph(env, graph, plan, resolver.resolved(), worker, env.download)
    result = solved.result
    if not isinstance(result, RootfsResult):
        raise PybuildError("the build target is not a root filesystem")
    config = image_config(graph.target, solved.steps, result.chain, request.source_date_epoch, request.labels)
    built = {s.layer.descriptor.digest for s in solved.steps.values() if s.layer is not None}
    pusher = registry_pusher(env, resolver.origins()) if any(o.pushes for o in request.outputs) else None
    exported = export_all(env.store, worker, request.outputs,
                          ExportInput(chain=result.chain, config=config, built=built, tags=request.tags,
                                      stdout=request.stdout, push=pusher, docker_socket=request.docker_socket,
                                      annotations=request.annotations))
    image = exported.image
    return BuildResult(digest=image.manifest_descriptor.digest, config_digest=image.config_descriptor.digest,
                       descriptor=image.manifest_descriptor, metadata=build_metadata(image, exported.names))


def _graph(plan: BuildPlan, req: BuildRequest, resolver: SourceResolver) -> BuildGraph:
    """The Dockerfile as a build graph (the frontend), checked for entitlements."""
    from builder.pipeline.entitlements import check_entitlements
    from frontend.convert import FrontendOptions, NamedContext, convert
    from frontend.dockerignore import read_dockerignore
    named = {n: NamedContext(kind=s.kind, value=s.value, tag=s.tag) for n, s in plan.named.items()}
    excludes = read_dockerignore(plan.context, str(plan.dockerfile.resolve()))
    opts = FrontendOptions(filename=plan.dockerfile.name, build_args=dict(req.build_args), target=req.target,
                           platform=plan.platform, build_platform=plan.build_platform, named_contexts=named,
                           context_excludes=excludes, resolver=resolver)
    graph = convert(plan.dockerfile_data, opts)
    check_entitlements(graph, req.allow)
    return graph


def _worker(env: BuildEnv, req: BuildRequest) -> Worker:
    # Layers are written in the first OCI output's compression (one pass: tar, compress, hash).
    # Builds that export no OCI tar keep layers uncompressed: BuildKit's image store and rootfs
    # outputs do not compress either, and a later OCI export compresses them once.
    comp = next((o.compression for o in req.outputs if o.type in ("oci", "docker") or o.pushes),
                Compression.UNCOMPRESSED)
    logs = env.tmp / "logs"
    logs.mkdir(exist_ok=True)
    return Worker(env.store, SandboxOptions(
        root=env.root, snapshotter=req.snapshotter, compression=comp, source_date_epoch=req.source_date_epoch,
        step_memory=req.step_memory, step_pids=req.step_pids, step_log_limit=req.step_log_limit,
        step_log_dir=logs, max_layer_expansion=req.max_layer_expansion,
        max_expansion_ratio=req.max_expansion_ratio, relaxed=req.relaxed))
