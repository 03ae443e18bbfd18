"""Every conformance case's Dockerfile converts (or, for frontend errors, fails with a
DockerfileError), and the image config matches expected.json where the frontend decides it."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from builder.errors import DockerfileError
from builder.image.oci import Platform
from frontend.convert import FrontendOptions, convert
from conftest import conformance_case_names, shared_path
from test_frontend_fakes import FakeResolver

# expect_error cases whose error is found at run time (solver/runner), not by the frontend
RUNTIME_ERRORS = {"err-add-checksum-mismatch", "err-copy-missing-file", "err-run-exit-1"}


def case(name: str) -> Path:
    """A shared conformance case's folder; the test fails when the shared data is missing."""
    return shared_path("conformance", "cases", name)


def _convert(case_dir: Path):  # type: ignore[no-untyped-def]
    case = json.loads((case_dir / "case.json").read_text()) if (case_dir / "case.json").is_file() else {}
    dockerfile = case.get("dockerfile", "Dockerfile")
    opts = FrontendOptions(build_args=case.get("build_args", {}), target=case.get("target"),
                           platform=Platform(os="linux", architecture="amd64"),
                           build_platform=Platform(os="linux", architecture="amd64"), resolver=FakeResolver())
    return case, convert((case_dir / dockerfile).read_bytes(), opts)


def _norm(cfg: dict) -> dict:
    out = {}
    for k in ("Env", "Cmd", "Entrypoint", "WorkingDir", "User", "Labels", "StopSignal", "Healthcheck", "Shell",
              "OnBuild"):
        out[k] = cfg.get(k) or None
    for k in ("ExposedPorts", "Volumes"):
        v = cfg.get(k)
        out[k] = sorted(v) if v else None
    return out


@pytest.mark.parametrize("name", conformance_case_names())
def test_conformance_case_converts(name: str) -> None:
    case_dir = case(name)
    meta = json.loads((case_dir / "case.json").read_text()) if (case_dir / "case.json").is_file() else {}
    if meta.get("expect_error") and case_dir.name not in RUNTIME_ERRORS:
        with pytest.raises(DockerfileError) as e:
            _convert(case_dir)
        assert e.value.filename == "Dockerfile"
        return
    _, graph = _convert(case_dir)
    assert graph.graph.number_of_nodes() >= 1
    expected = json.loads((case_dir / "expected.json").read_text()).get("config")
    if expected is not None:
        assert _norm(graph.target.config.config.to_json()) == _norm(expected)


def test_unused_stage_not_in_graph() -> None:
    _, graph = _convert(case("multistage-unused-stage-skipped"))
    runs = [v.op.args[-1] for v in graph.topological() if type(v.op).__name__ == "ExecOp"]
    assert runs == ["echo used > /used.txt"]


def test_target_stops_early() -> None:
    _, graph = _convert(case("multistage-target"))
    runs = [v.op.args[-1] for v in graph.topological() if type(v.op).__name__ == "ExecOp"]
    assert sorted(runs) == ["echo base > /base.txt", "echo middle > /middle.txt"]


def test_duplicate_stage_name_takes_later() -> None:
    _, graph = _convert(case("stage-name-duplicate"))
    runs = [v.op.args[-1] for v in graph.topological() if type(v.op).__name__ == "ExecOp"]
    assert runs == ["echo second > /which.txt"]
