"""The solver with fake ops that count executions (as BuildKit tests its solver), and with the
real exec/file runners over a fake executor."""
import threading
import time

import pytest

from builder.solve.cache import CacheIndex
from builder.solve.contenthash import checksum_sources
from builder.solve.explain import MissExplainer
from builder.solve.runner import RunnerRegistry
from builder.solve.runners.exec import ExecRunner
from builder.solve.runners.file import FileRunner
from builder.solve.runners.sources import LocalRunner, ScratchRunner
from builder.solve.selection import Selection
from builder.errors import StepError
from builder.solve.graph import BuildGraph, SourceLocation, Target, Vertex
from builder.image.view import HostDir, LayerRef
from builder.image.oci import Descriptor, ImageConfig, MediaType
from builder.solve.ops import Copy, ExecOp, FileOp, LocalSource, ScratchSource
from builder.solve.solver import SolveOptions, Solver
from builder.store.content import ContentStore


class FakeWorker:
    def __init__(self, store, fail_on=None, delay=0.0):
        self.store = store
        self.calls = []
        self.envs = []
        self.fail_on = fail_on
        self.delay = delay
        self.active = 0
        self.max_active = 0
        self.lock = threading.Lock()

    def _layer(self, text):
        d, n = self.store.put_bytes(text.encode())
        return LayerRef(descriptor=Descriptor(media_type=MediaType.OCI_LAYER, digest=d, size=n), diff_id=d)

    def run_exec(self, *, base, op, mount_sources, secrets, output=None):
        with self.lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        time.sleep(self.delay)
        with self.lock:
            self.active -= 1
        self.calls.append(op.args)
        self.envs.append(op.env)
        if self.fail_on and self.fail_on in op.args:
            from builder.errors import ExecError
            raise ExecError("exit code 1", exit_code=1)
        return self._layer(" ".join(op.args) + str(len(base)))

    def run_file(self, *, base, op, sources):
        self.calls.append(("file",) + tuple(a.src_paths for a in op.actions))
        return self._layer(repr(op.actions) + str(len(base)))

    def cancel(self):
        pass


def graph(ctx_excludes=(), run_args=("echo", "hi"), copy_src=("a.txt",)):
    scratch = Vertex(op=ScratchSource())
    ctx = Vertex(op=LocalSource(name="context", excludes=ctx_excludes))
    cp = Vertex(op=FileOp(actions=(Copy(src=1, src_paths=copy_src, dest="/"),)), inputs=(scratch, ctx), name="COPY")
    run = Vertex(op=ExecOp(args=run_args, env=()), inputs=(cp,), name="RUN",
                 source_location=SourceLocation(filename="Dockerfile", start_line=3, end_line=3))
    return BuildGraph.from_target(Target(vertex=run, config=ImageConfig()))


def checksum(d: HostDir, sel: Selection):
    return checksum_sources(d.path, sel.paths, excludes=d.excludes, copy_excludes=sel.excludes,
                            follow_top_symlinks=sel.follow_symlinks)


def make_solver(tmp_path, worker, **kw):
    store = worker.store
    runners = (RunnerRegistry()
               .register(ScratchSource, ScratchRunner())
               .register(LocalSource, LocalRunner({"context": tmp_path / "ctx"}))
               .register(ExecOp, ExecRunner(executor=worker, secrets={}, checksum=checksum,
                                            progress=kw.get("progress", lambda e: None)))
               .register(FileOp, FileRunner(executor=worker, checksum=checksum)))
    return Solver(runners=runners, store=store, cache=CacheIndex(tmp_path / "root"),
                  explainer=MissExplainer(tmp_path / "root"), options=SolveOptions(**kw))


@pytest.fixture
def env(tmp_path):
    (tmp_path / "ctx").mkdir()
    (tmp_path / "ctx" / "a.txt").write_text("one")
    (tmp_path / "ctx" / "b.txt").write_text("unrelated")
    return tmp_path


def test_rebuild_is_fully_cached_and_identical(env):
    w = FakeWorker(ContentStore(env / "root"))
    r1 = make_solver(env, w).solve(graph())
    assert len(w.calls) == 2
    s2 = make_solver(env, w)
    r2 = s2.solve(graph())
    assert len(w.calls) == 2, "no step may run on an unchanged rebuild"
    assert r1 == r2
    assert all(s.cached for s in s2.steps.values())


def test_changing_selected_file_reruns_copy_and_after_only(env):
    w = FakeWorker(ContentStore(env / "root"))
    make_solver(env, w).solve(graph())
    (env / "ctx" / "b.txt").write_text("changed but not selected")
    make_solver(env, w).solve(graph())
    assert len(w.calls) == 2
    (env / "ctx" / "a.txt").write_text("two")
    make_solver(env, w).solve(graph())
    assert len(w.calls) == 4


def test_no_cache_runs_everything(env):
    w = FakeWorker(ContentStore(env / "root"))
    make_solver(env, w).solve(graph())
    make_solver(env, w, no_cache=True).solve(graph())
    assert len(w.calls) == 4


def test_failure_carries_dockerfile_location(env):
    w = FakeWorker(ContentStore(env / "root"), fail_on="boom")
    with pytest.raises(StepError) as ei:
        make_solver(env, w).solve(graph(run_args=("boom",)))
    assert str(ei.value).startswith("Dockerfile:3: RUN")


def test_independent_vertices_run_in_parallel(env):
    w = FakeWorker(ContentStore(env / "root"), delay=0.3)
    scratch = Vertex(op=ScratchSource())
    a = Vertex(op=ExecOp(args=("a",), env=()), inputs=(scratch,))
    b = Vertex(op=ExecOp(args=("b",), env=()), inputs=(scratch,))
    join = Vertex(op=FileOp(actions=(Copy(src=1, src_paths=("/x",), dest="/"),)), inputs=(a, b))
    make_solver(env, w).solve(BuildGraph.from_target(Target(vertex=join, config=ImageConfig())))
    assert w.max_active == 2


def test_proxy_build_args_are_not_in_cache_keys_but_a_dockerfile_env_is(env):
    w = FakeWorker(ContentStore(env / "root"))
    scratch = Vertex(op=ScratchSource())

    def g(env_=("A=1",), proxies=()):
        run = Vertex(op=ExecOp(args=("x",), env=env_, proxy_env=proxies), inputs=(scratch,))
        return BuildGraph.from_target(Target(vertex=run, config=ImageConfig()))
    make_solver(env, w).solve(g(proxies=("HTTP_PROXY=http://p1:3128",)))
    make_solver(env, w).solve(g(proxies=("HTTP_PROXY=http://p2:3128", "no_proxy=x")))
    assert len(w.calls) == 1, "another proxy is a hit"
    assert set(w.envs[-1]) == {"A=1", "HTTP_PROXY=http://p1:3128"}, "the step still sees its proxies"
    make_solver(env, w).solve(g(env_=("A=1", "HTTP_PROXY=http://mine:1")))
    assert len(w.calls) == 2, "ENV HTTP_PROXY in the Dockerfile is part of the step"
    make_solver(env, w).solve(g(env_=("A=1", "HTTP_PROXY=http://other:1")))
    assert len(w.calls) == 3


def test_copy_exclude_keeps_excluded_files_out_of_the_key(env):
    w = FakeWorker(ContentStore(env / "root"))

    def g():
        scratch = Vertex(op=ScratchSource())
        ctx = Vertex(op=LocalSource(name="context"))
        cp = Vertex(op=FileOp(actions=(Copy(src=1, src_paths=(".",), dest="/", exclude=("b.txt",)),)),
                    inputs=(scratch, ctx), name="COPY")
        return BuildGraph.from_target(Target(vertex=cp, config=ImageConfig()))
    make_solver(env, w).solve(g())
    (env / "ctx" / "b.txt").write_text("excluded, changed")
    make_solver(env, w).solve(g())
    assert len(w.calls) == 1, "a change to an excluded file is still a hit"
    (env / "ctx" / "a.txt").write_text("selected, changed")
    make_solver(env, w).solve(g())
    assert len(w.calls) == 2


def test_copy_key_follows_a_top_level_symlink_only_when_the_copy_does(env):
    import os
    w = FakeWorker(ContentStore(env / "root"))
    os.symlink("a.txt", env / "ctx" / "link")

    def g(follow):
        scratch = Vertex(op=ScratchSource())
        ctx = Vertex(op=LocalSource(name="context"))
        cp = Vertex(op=FileOp(actions=(Copy(src=1, src_paths=("link",), dest="/x", follow_symlinks=follow),)),
                    inputs=(scratch, ctx), name="COPY")
        return BuildGraph.from_target(Target(vertex=cp, config=ImageConfig()))
    make_solver(env, w).solve(g(True))
    make_solver(env, w).solve(g(False))
    assert len(w.calls) == 2
    (env / "ctx" / "a.txt").write_text("target changed")
    make_solver(env, w).solve(g(False))
    assert len(w.calls) == 2, "the link itself did not change"
    make_solver(env, w).solve(g(True))
    assert len(w.calls) == 3, "the followed target changed"


def test_a_miss_says_why(env):
    from builder.progress import VertexEvent
    events = []
    w = FakeWorker(ContentStore(env / "root"))
    make_solver(env, w, progress=events.append).solve(graph())
    (env / "ctx" / "a.txt").write_text("changed")
    events.clear()
    make_solver(env, w, progress=events.append).solve(graph())
    reasons = {e.name: e.reason for e in events if isinstance(e, VertexEvent) and e.status == "started"}
    assert reasons == {"COPY": "the files it uses changed (a.txt)", "RUN": "the previous step changed"}
    events.clear()
    make_solver(env, w, progress=events.append).solve(graph(run_args=("echo", "other")))
    reasons = {e.name: e.reason for e in events if isinstance(e, VertexEvent) and e.status == "started"}
    assert reasons == {"RUN": "the instruction or its options changed"}


# ---------------------------------------------------------------------------------------------
# The solver is generic: fake ops with counting runners, sources included.

from dataclasses import dataclass  # noqa: E402

from builder.solve.cache import CacheMap, op_digest  # noqa: E402
from builder.solve.ops import _Op  # noqa: E402
from builder.solve.results import RootfsResult  # noqa: E402
from builder.solve.runners.sources import source_key  # noqa: E402
from builder.solve.selection import input_deps  # noqa: E402


@dataclass(frozen=True, slots=True, kw_only=True)
class FakeSource(_Op):
    name: str


@dataclass(frozen=True, slots=True, kw_only=True)
class FakeStep(_Op):
    text: str


class CountingSource:
    announce = True

    def __init__(self):
        self.runs = []

    def cache_map(self, v, inputs):
        return None

    def run(self, v, inputs, key):
        self.runs.append(v.op.name)
        return RootfsResult(key=source_key(v), chain=())


class CountingStep:
    announce = False

    def __init__(self, store):
        self.store = store
        self.runs = []

    def cache_map(self, v, inputs):
        return CacheMap(digest=op_digest(v.op.op_json()), deps=input_deps(inputs, {}, checksum))

    def run(self, v, inputs, key):
        self.runs.append(v.op.text)
        d, n = self.store.put_bytes(v.op.text.encode())
        layer = LayerRef(descriptor=Descriptor(media_type=MediaType.OCI_LAYER, digest=d, size=n), diff_id=d)
        return RootfsResult(key=key, chain=inputs[0].chain + (layer,))


def fake_solver(tmp_path, src, step, **kw):
    reg = RunnerRegistry().register(FakeSource, src).register(FakeStep, step)
    return Solver(runners=reg, store=step.store, cache=CacheIndex(tmp_path / "root"),
                  explainer=MissExplainer(tmp_path / "root"), options=SolveOptions(**kw))


def diamond(top="d"):
    s = Vertex(op=FakeSource(name="base"), name="src")
    a = Vertex(op=FakeStep(text="a"), inputs=(s,), name="a")
    b = Vertex(op=FakeStep(text="b"), inputs=(s,), name="b")
    d = Vertex(op=FakeStep(text=top), inputs=(a, b), name="top")
    return BuildGraph.from_target(Target(vertex=d, config=ImageConfig()))


def test_fake_ops_each_run_once_and_a_rebuild_runs_only_sources(tmp_path):
    src, step = CountingSource(), CountingStep(ContentStore(tmp_path / "root"))
    r1 = fake_solver(tmp_path, src, step).solve(diamond())
    assert src.runs == ["base"], "a shared input runs once"
    assert sorted(step.runs) == ["a", "b", "d"]
    r2 = fake_solver(tmp_path, src, step).solve(diamond())
    assert src.runs == ["base", "base"], "sources are resolved by every build"
    assert sorted(step.runs) == ["a", "b", "d"], "every cached op is a hit"
    assert r1 == r2
    fake_solver(tmp_path, src, step).solve(diamond(top="e"))
    assert sorted(step.runs) == ["a", "b", "d", "e"], "only the changed op runs"


def test_fake_ops_no_cache_and_progress_events(tmp_path):
    from builder.progress import VertexEvent
    events = []
    src, step = CountingSource(), CountingStep(ContentStore(tmp_path / "root"))
    fake_solver(tmp_path, src, step).solve(diamond())
    fake_solver(tmp_path, src, step, no_cache=True, progress=events.append).solve(diamond())
    assert len(step.runs) == 6
    started = [e.name for e in events if isinstance(e, VertexEvent) and e.status == "started"]
    assert sorted(started) == ["a", "b", "src", "top"]


def test_an_op_without_a_runner_fails_with_its_location(tmp_path):
    src = CountingSource()
    reg = RunnerRegistry().register(FakeSource, src)
    v = Vertex(op=FakeStep(text="x"), inputs=(Vertex(op=FakeSource(name="s")),), name="X",
               source_location=SourceLocation(filename="Dockerfile", start_line=9, end_line=9))
    solver = Solver(runners=reg, store=ContentStore(tmp_path / "root"), cache=CacheIndex(tmp_path / "root"),
                    explainer=MissExplainer(tmp_path / "root"), options=SolveOptions())
    with pytest.raises(StepError) as ei:
        solver.solve(BuildGraph.from_target(Target(vertex=v, config=ImageConfig())))
    assert ei.value.location == "Dockerfile:9" and ei.value.vertex == str(v.digest)
    assert "no runner for op FakeStep" in str(ei.value)


def test_a_runner_that_adds_more_than_one_layer_is_refused(tmp_path):
    class Greedy(CountingStep):
        def run(self, v, inputs, key):
            r = super().run(v, inputs, key)
            return RootfsResult(key=key, chain=r.chain + r.chain)
    store = ContentStore(tmp_path / "root")
    v = Vertex(op=FakeStep(text="x"), inputs=(Vertex(op=FakeSource(name="s")),), name="X")
    with pytest.raises(StepError, match="at most one layer"):
        fake_solver(tmp_path, CountingSource(), Greedy(store)).solve(
            BuildGraph.from_target(Target(vertex=v, config=ImageConfig())))


def test_a_malformed_cache_record_is_a_miss(tmp_path):
    src, step = CountingSource(), CountingStep(ContentStore(tmp_path / "root"))
    fake_solver(tmp_path, src, step).solve(diamond())
    for rec in (tmp_path / "root" / "cache").glob("??/*"):
        rec.write_text('{"key": 5, "layer": [1, 2]}')
    fake_solver(tmp_path, src, step).solve(diamond())
    assert len(step.runs) == 6


def test_a_chain_of_thousands_of_vertices_has_a_digest_without_recursion():
    v = Vertex(op=ScratchSource())
    for i in range(5000):
        v = Vertex(op=ExecOp(args=(str(i),), env=()), inputs=(v,))
    g = BuildGraph.from_target(Target(vertex=v, config=ImageConfig()))
    assert len(g.graph) == 5001 and str(v.digest).startswith("sha256:")
