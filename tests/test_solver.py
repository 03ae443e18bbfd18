"""The solver with fake ops that count executions (as BuildKit tests its solver)."""
import threading
import time
from pathlib import Path

import pytest

from builder.solve.cache import CacheIndex
from builder.image.digest import Digest
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


def checksum(d: HostDir, sel):
    return Digest.of_bytes(b"".join((d.path / s).read_bytes() for s in sel)).hex


def make_solver(tmp_path, worker, **kw):
    store = worker.store
    return Solver(store=store, cache=CacheIndex(tmp_path / "root"), worker=worker, load_image=None,
                  make_dir=None, checksum=checksum,
                  options=SolveOptions(contexts={"context": tmp_path / "ctx"}, **kw))


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


def test_proxy_env_is_not_in_cache_keys(env):
    w = FakeWorker(ContentStore(env / "root"))
    scratch = Vertex(op=ScratchSource())

    def g(extra):
        run = Vertex(op=ExecOp(args=("x",), env=("A=1",) + extra), inputs=(scratch,))
        return BuildGraph.from_target(Target(vertex=run, config=ImageConfig()))
    make_solver(env, w).solve(g(("HTTP_PROXY=http://p1:3128",)))
    make_solver(env, w).solve(g(("HTTP_PROXY=http://p2:3128", "no_proxy=x")))
    assert len(w.calls) == 1
    make_solver(env, w).solve(g(("A2=changed",)))
    assert len(w.calls) == 2


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
