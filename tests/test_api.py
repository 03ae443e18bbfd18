"""The public library API is pinned."""
import builder


def test_public_api_is_pinned():
    assert builder.__all__ == ["build", "BuildRequest", "BuildResult", "OutputSpec", "PybuildError",
                               "DockerfileError", "ExecError"]
    import dataclasses
    fields = [f.name for f in dataclasses.fields(builder.BuildResult)]
    assert fields == ["digest", "config_digest", "descriptor", "metadata"]
    assert callable(builder.build)


def test_library_build_returns_digests(tmp_path, base_layout):
    import shutil
    from pathlib import Path
    from conftest import REPO
    from imagecheck import validate_image
    ctx = tmp_path / "ex"
    shutil.copytree(REPO / "testdata" / "example", ctx)
    out = tmp_path / "img.tar"
    events = []
    res = builder.build(builder.BuildRequest(
        context=ctx, root=tmp_path / "root", build_contexts={"base": f"oci-layout://{base_layout}:latest"},
        outputs=(builder.OutputSpec(type="oci", dest=str(out)),), progress=events.append))
    img = validate_image(out)
    assert str(res.digest) == img["digest"]
    assert str(res.config_digest) == img["manifest"]["config"]["digest"]
    assert res.descriptor.digest == res.digest
    assert events, "progress events are delivered to the sink"


def test_a_bad_request_is_refused_before_anything_is_created(tmp_path):
    """Checked first: no store, no temp dir, no sandbox worker for a request that cannot build."""
    import pytest
    from builder.errors import UsageError
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM scratch\n")
    bad = [dict(context=tmp_path / "missing"),
           dict(context=ctx, tags=("Not A Tag",)),
           dict(context=ctx, dockerfile=ctx / "nope"),
           dict(context=ctx, build_contexts={"x": "ftp://host/x"}),
           dict(context=ctx, outputs=(builder.OutputSpec(type="tar", dest="-"),))]
    for kw in bad:
        root = tmp_path / "root"
        with pytest.raises(UsageError):
            builder.build(builder.BuildRequest(root=root, **kw))
        assert not root.exists(), kw
