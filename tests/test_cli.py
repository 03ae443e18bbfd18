import click
import pytest

from builder.api import OutputSpec
from builder.cli import default_root, main, parse_build_args, parse_output, parse_secrets


@pytest.mark.parametrize("text,want", [
    ("type=oci,dest=out.tar", OutputSpec(type="oci", dest="out.tar")),
    ("type=oci,dest=o.tar,compression=zstd", OutputSpec(type="oci", dest="o.tar", compression="zstd")),
    ("type=tar,dest=fs.tar", OutputSpec(type="tar", dest="fs.tar")),
    ("type=local,dest=dir", OutputSpec(type="local", dest="dir")),
    ("somedir", OutputSpec(type="local", dest="somedir")),
    ("-", OutputSpec(type="tar", dest="-")),
    ("type=docker,dest=d.tar", OutputSpec(type="docker", dest="d.tar")),
    ("type=docker", OutputSpec(type="docker")),
    ('type=docker,dest=d.tar,"name=a:1,b"', OutputSpec(type="docker", dest="d.tar", names=("a:1", "b"))),
    ("type=oci,dest=dir,tar=false", OutputSpec(type="oci", dest="dir", tar=False)),
    ('type=image,"name=r/a:1,r/b:2",push=true', OutputSpec(type="image", names=("r/a:1", "r/b:2"), push=True)),
    ("type=image,push=false", OutputSpec(type="image")),
    ("type=registry,name=h:5000/x:1", OutputSpec(type="registry", names=("h:5000/x:1",))),
    ("type=registry", OutputSpec(type="registry")),
    ("type=registry,compression=zstd", OutputSpec(type="registry", compression="zstd")),
    ("type=docker,dest=d,oci-mediatypes=true", OutputSpec(type="docker", dest="d", oci_mediatypes=True)),
    ("type=oci,dest=d,oci-mediatypes=false", OutputSpec(type="oci", dest="d", oci_mediatypes=False)),
    ("type=oci,dest=d,compression=zstd,force-compression=true",
     OutputSpec(type="oci", dest="d", compression="zstd", force_compression=True)),
])
def test_parse_output(text, want):
    assert parse_output(text) == want


@pytest.mark.parametrize("text", ["type=bogus,dest=x", "type=tar", "type=image,push=maybe",
                                  "type=oci,dest=x,tar=nope", "type=tar,dest=x,oci-mediatypes=true", "type=image,compression=zstd", "type=oci", "type=oci,dest=x,compression=lz4",
                                  "type=tar,dest=x,compression=zstd", "type=oci,dest=x,bogus=1", "type=oci,dest"])
def test_parse_output_rejects(text):
    with pytest.raises(click.BadParameter):
        parse_output(text)


def test_build_args_from_env():
    assert parse_build_args(["A=1", "B", "C"], {"B": "from-env"}) == {"A": "1", "B": "from-env"}


def test_secrets(tmp_path):
    (tmp_path / "s").write_bytes(b"tok")
    assert parse_secrets([f"id=a,src={tmp_path / 's'}", "id=b,env=V"], {"V": "x"}) == {"a": b"tok", "b": b"x"}
    with pytest.raises(click.BadParameter):
        parse_secrets([f"id=a,src={tmp_path / 'missing'}"], {})


def test_default_root():
    assert str(default_root({"PYBUILD_ROOT": "/x"})) == "/x"
    assert str(default_root({"HOME": "/home/u"})) == "/home/u/.local/share/pybuild"


def test_bad_usage_exits_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as ei:
        main(["build", str(tmp_path / "nope")])
    assert ei.value.code == 2
    with pytest.raises(SystemExit) as ei:
        main(["build", "--no-such-flag", str(tmp_path)])
    assert ei.value.code == 2


def test_image_output_names_and_strict_inputs(monkeypatch):
    assert parse_output('type=image,"name=a:1,b:2"') == OutputSpec(type="image", names=("a:1", "b:2"))
    from builder.cli import parse_source_date_epoch
    assert parse_source_date_epoch({}) is None and parse_source_date_epoch({"SOURCE_DATE_EPOCH": "10"}) == 10
    for bad in ("-1", "1.5", "x"):
        with pytest.raises(click.BadParameter):
            parse_source_date_epoch({"SOURCE_DATE_EPOCH": bad})
    with pytest.raises(click.BadParameter):
        parse_secrets(["id=a,src=/etc/hostname,bogus=1"], {})


def test_bad_tag_and_foreign_platform_fail_before_building(tmp_path):
    (tmp_path / "Dockerfile").write_text("FROM scratch\n")
    for args in (["-t", "Bad:Tag"], ["--platform", "windows/amd64"]):
        with pytest.raises(SystemExit) as ei:
            main(["build", *args, str(tmp_path)])
        assert ei.value.code == 2


def test_push_flag_like_buildx():
    from builder.cli import with_push
    assert with_push((), True) == (OutputSpec(type="registry"),)
    assert with_push((OutputSpec(type="image"),), True) == (OutputSpec(type="image", push=True),)
    oci = OutputSpec(type="oci", dest="x.tar")
    assert with_push((oci,), True) == (oci, OutputSpec(type="registry"))
    assert with_push((oci,), False) == (oci,)
    assert OutputSpec(type="registry").pushes and OutputSpec(type="image", push=True).pushes
    assert not OutputSpec(type="image").pushes


def test_labels_and_result_files(tmp_path):
    import json
    from builder.api import BuildResult
    from builder.cli import parse_labels, write_result_files
    from builder.image.digest import Digest
    from builder.image.oci import Descriptor
    assert parse_labels(["a=1", "b=x=y", "c="]) == {"a": "1", "b": "x=y", "c": ""}
    with pytest.raises(click.BadParameter):
        parse_labels(["novalue"])
    d = Digest.of_bytes(b"m")
    res = BuildResult(digest=d, config_digest=Digest.of_bytes(b"c"),
                      descriptor=Descriptor(media_type="application/vnd.oci.image.manifest.v1+json", digest=d, size=1),
                      metadata={"containerimage.digest": str(d), "containerimage.descriptor": {"size": 1}})
    write_result_files(res, tmp_path / "meta.json", tmp_path / "iid")
    assert (tmp_path / "iid").read_text() == str(d)
    assert json.loads((tmp_path / "meta.json").read_text())["containerimage.descriptor"] == {"size": 1}


def test_annotations_like_buildx():
    from builder.cli import parse_annotations
    from builder.request import Annotation
    assert parse_annotations(["a=1", "manifest:b=2", "index:c=3=x", "manifest-descriptor:d=", "manifest[linux/amd64]:e=5"]) == (
        Annotation(key="a", value="1"), Annotation(key="b", value="2"), Annotation(key="c", value="3=x", level="index"),
        Annotation(key="d", value="", level="manifest-descriptor"), Annotation(key="e", value="5"))
    for bad in ("novalue", "bogus:k=v", "index-descriptor:k=v"):
        with pytest.raises(click.BadParameter):
            parse_annotations([bad])


def test_registry_config_and_ca_bundle_from_env(tmp_path, monkeypatch):
    from pathlib import Path
    from builder.cli import ca_bundle, registry_config_path
    assert registry_config_path({"PYBUILD_CONFIG": "/c.toml", "HOME": "/h"}) == Path("/c.toml")
    assert registry_config_path({"HOME": "/h"}) == Path("/h/.config/pybuild/config.toml")
    assert registry_config_path({"XDG_CONFIG_HOME": "/x", "HOME": "/h"}) == Path("/x/pybuild/config.toml")
    assert ca_bundle({"SSL_CERT_FILE": "/a", "REQUESTS_CA_BUNDLE": "/b"}) == Path("/a")
    assert ca_bundle({"REQUESTS_CA_BUNDLE": "/b"}) == Path("/b") and ca_bundle({}) is None
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM scratch\n")
    (tmp_path / "bad.toml").write_text('[registry."x"]\nhttp = "yes"\n')
    monkeypatch.setenv("PYBUILD_CONFIG", str(tmp_path / "bad.toml"))
    monkeypatch.setenv("PYBUILD_ROOT", str(tmp_path / "root"))
    with pytest.raises(SystemExit) as ei:
        main(["build", str(ctx)])
    assert ei.value.code == 2 and not (tmp_path / "root").exists()


def test_sandbox_flags_parse_sizes_and_protections():
    import click
    import pytest
    from builder.cliopts import parse_size, sandbox_limits
    assert parse_size("512m", "--x") == 512 << 20 and parse_size("2g", "--x") == 2 << 30 and parse_size("10", "--x") == 10
    with pytest.raises(click.BadParameter):
        parse_size("lots", "--step-memory")
    lim = sandbox_limits({"step_memory": "64m", "step_pids": 50, "max_layer_expansion": "none",
                          "max_expansion_ratio": 7, "relaxed": ("seccomp",)})
    assert lim == {"step_memory": 64 << 20, "step_pids": 50, "step_log_limit": None, "max_layer_expansion": None,
                   "max_expansion_ratio": 7, "relaxed": ("seccomp",)}
    with pytest.raises(click.BadParameter, match="use one of capabilities"):
        sandbox_limits({"relaxed": ("everything",)})


def test_step_limits_are_enforced_or_refused_with_the_reason(pybuild, workdir, base_image):
    from conftest import make_context
    ctx = make_context(workdir / "lim", {"Dockerfile": f"FROM {base_image}\nRUN echo hi > /x\n"})
    r = pybuild("build", str(ctx), "--step-memory", "256m", "--step-pids", "64", "-o", str(workdir / "lim-out"))
    if r.returncode != 0:       # no delegated cgroup v2 here: refused, never silently dropped
        assert r.returncode == 1 and "delegat" in r.stderr and "Traceback" not in r.stderr, r.stderr
    else:
        assert (workdir / "lim-out" / "x").read_text() == "hi\n"
    r = pybuild("build", str(ctx), "--sandbox-relax", "everything")
    assert r.returncode == 2 and "--sandbox-relax" in r.stderr
