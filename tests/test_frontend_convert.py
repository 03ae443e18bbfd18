"""frontend/convert.py semantics: stages, ARG/ENV scoping, config, history, ops and vertices."""
from __future__ import annotations

import pytest

from builder.errors import DockerfileError, NotFoundError, RegistryError, SourceError
from builder.solve.graph import BuildGraph, Vertex
from builder.image.oci import Platform
from builder.solve.ops import (Chown, Copy, ExecOp, FileOp, HTTPSource, ImageSource, InlineSource, LocalSource, Mkdir,
                         OCILayoutSource, ScratchSource)
from frontend.convert import FrontendOptions, NamedContext, convert
from test_frontend_fakes import PATH_ENV, FakeResolver

AMD64 = Platform(os="linux", architecture="amd64")


def conv(text: str, **kw) -> BuildGraph:  # type: ignore[no-untyped-def]
    kw.setdefault("resolver", FakeResolver())
    return convert(text, FrontendOptions(platform=kw.pop("platform", AMD64), build_platform=kw.pop("build_platform", AMD64),
                                         **kw))


def execs(g: BuildGraph) -> list[ExecOp]:
    return [v.op for v in g.topological() if isinstance(v.op, ExecOp)]


def chain(v: Vertex) -> list[Vertex]:
    """The vertex and its input-0 ancestors, base first."""
    out = [v]
    while out[-1].inputs:
        out.append(out[-1].inputs[0])
    return out[::-1]


def test_env_same_line_uses_old_value_and_env_wins_over_arg() -> None:
    g = conv("FROM busybox\nARG A=fromarg\nENV A=alpha\nENV A=changed E=$A\nRUN echo\n")
    cfg = g.target.config.config
    assert cfg.env == (PATH_ENV, "A=changed", "E=alpha")
    (run,) = execs(g)
    assert run.env == (PATH_ENV, "A=changed", "E=alpha")


def test_arg_after_env_wins_for_run_and_expansion_not_config() -> None:
    """BuildKit 20.10 (conformance-extra/arg-env-precedence): a later ARG with a value overrides
    the ENV in the step environment and in expansion; the image config keeps the ENV."""
    g = conv("FROM busybox\nENV A=env\nARG A=late\nLABEL a=$A\nRUN echo\nENV A=env2\nRUN echo 2\n")
    cfg = g.target.config.config
    assert cfg.env == (PATH_ENV, "A=env2") and dict(cfg.labels) == {"a": "late"}
    first, second = execs(g)
    assert "A=late" in first.env and "A=env2" in second.env


def test_args_are_in_run_env_not_in_config() -> None:
    g = conv("FROM busybox\nARG V=1\nARG NOVAL\nRUN echo $V\nLABEL v=$V\n", build_args={"UNDECLARED": "x"})
    (run,) = execs(g)
    assert "V=1" in run.env and not any(e.startswith(("NOVAL", "UNDECLARED")) for e in run.env)
    assert g.target.config.config.env == (PATH_ENV,)
    assert dict(g.target.config.config.labels) == {"v": "1"}
    assert "RUN |2 V=1 NOVAL= /bin/sh -c echo $V # buildkit" in [h.created_by for h in g.target.history]


def test_global_args_only_after_redeclare_and_build_arg_override() -> None:
    g = conv("ARG BASE=busy\nARG TAG=1\nARG G=global\nFROM ${BASE}box:${TAG}\nLABEL a=[$G]\nARG G\nARG TAG\n"
             "LABEL b=[$G] t=$TAG\n", build_args={"TAG": "2"})
    src = chain(g.target.vertex)[0].op
    assert isinstance(src, ImageSource) and src.ref == "docker.io/library/busybox:2"
    assert dict(g.target.config.config.labels) == {"a": "[]", "b": "[global]", "t": "2"}


def test_predefined_platform_args() -> None:
    arm = Platform(os="linux", architecture="arm64", variant="v8")
    g = conv("ARG TARGETPLATFORM\nFROM --platform=$BUILDPLATFORM busybox AS b\nARG TARGETARCH\nARG TARGETVARIANT\n"
             "ARG BUILDARCH\nARG TARGETPLATFORM\nRUN x\n", platform=arm)
    (run,) = execs(g)
    env = dict(e.split("=", 1) for e in run.env)
    assert (env["TARGETARCH"], env["TARGETVARIANT"], env["BUILDARCH"]) == ("arm64", "v8", "amd64")
    assert env["TARGETPLATFORM"] == "linux/arm64/v8"    # a value-less global ARG keeps the automatic value
    src = chain(g.target.vertex)[0].op
    assert src.platform == AMD64                         # --platform=$BUILDPLATFORM


def test_valueless_global_platform_arg_keeps_automatic_value() -> None:
    """dockerfile 1.19 (public case predefined-platform-args): `ARG TARGETPLATFORM` before FROM
    without a value keeps linux/amd64; an ordinary value-less global ARG stays unset."""
    g = conv("ARG TARGETPLATFORM\nARG BUILDOS\nARG OTHER\nFROM busybox\nARG TARGETPLATFORM\nARG BUILDOS\n"
             "ARG OTHER\nRUN x\n")
    env = dict(e.split("=", 1) for e in execs(g)[0].env)
    assert (env["TARGETPLATFORM"], env["BUILDOS"]) == ("linux/amd64", "linux")
    assert "OTHER" not in env


def test_copy_from_takes_the_last_stage_above() -> None:
    """With duplicate names, --from takes the last stage of that name above it; one below is
    not seen (and alone would be an error)."""
    g = conv("FROM busybox AS x\nRUN one\nFROM busybox AS y\nCOPY --from=x /a /\nFROM busybox AS x\nRUN two\n",
             target="y")
    assert [r.args[-1] for r in execs(g)] == ["one"]


def test_expose_with_host_port_keeps_the_container_port() -> None:
    g = conv("FROM busybox\nEXPOSE 8080:80 127.0.0.1:53:53/udp 9000\n")
    assert g.target.config.config.exposed_ports == ("53/udp", "80/tcp", "9000/tcp")


@pytest.mark.parametrize("flag,want", [("linux", "linux/arm64/v8"), ("arm", "linux/arm"),
                                       ("linux/amd64", "linux/amd64")])
def test_from_platform_with_only_an_os_or_arch(flag: str, want: str) -> None:
    arm = Platform(os="linux", architecture="arm64", variant="v8")
    g = conv(f"FROM --platform={flag} busybox\nRUN x\n", build_platform=arm)
    assert str(chain(g.target.vertex)[0].op.platform) == want


def test_healthcheck_cmd_followed_by_a_tab() -> None:
    g = conv("FROM busybox\nHEALTHCHECK CMD\tcurl -f x\nHEALTHCHECK --retries=2 CMD\t[\"a\", \"b\"]\n")
    assert g.target.config.config.healthcheck.test == ("CMD", "a", "b")
    g = conv("FROM busybox\nHEALTHCHECK CMD\tcurl -f x\n")
    assert g.target.config.config.healthcheck.test == ("CMD-SHELL", "curl -f x")


def test_onbuild_heredoc_trigger_fires_in_a_child_stage() -> None:
    g = conv("FROM busybox AS base\nONBUILD RUN <<EOF\necho from-trigger\nEOF\nFROM base\nRUN after\n")
    scripts = [" ".join(r.args) for r in execs(g)]
    assert len(scripts) == 2 and "echo from-trigger" in scripts[0] and scripts[1].endswith("after")
    assert g.target.config.config.onbuild == ()


@pytest.mark.parametrize("line", ["RUN <<EOF", "RUN <<  EOF", "RUN <<- EOF", "RUN <<'EOF'"])
def test_run_with_one_heredoc_alone_runs_its_body(line: str) -> None:
    (run,) = execs(conv(f"FROM busybox\n{line}\necho body\nEOF\n"))
    assert run.args == ("/bin/sh", "-c", "echo body\n")


def test_copy_heredoc_with_a_space_after_the_operator() -> None:
    g = conv("FROM busybox\nCOPY <<  EOF <<- 'B' /dst/\none\nEOF\n\ttwo\n\tB\n")
    (src,) = [v.op for v in g.topological() if isinstance(v.op, InlineSource)]
    assert [(f.name, f.data) for f in src.files] == [("EOF", b"one\n"), ("B", b"two\n")]


def test_run_heredoc_with_more_text_goes_to_the_shell() -> None:
    (run,) = execs(conv("FROM busybox\nRUN <<  EOF  > foo\nbody\nEOF\n"))
    assert run.args == ("/bin/sh", "-c", "<<  EOF  > foo\nbody\nEOF")


def test_proxy_build_args_reach_run_only() -> None:
    """Proxy build args go to ExecOp.proxy_env (never in the cache key), not to env or config;
    each sets both spellings, as BuildKit v0.25's ProxyEnv (conformance-extra run-proxy-build-args)."""
    g = conv("FROM busybox\nRUN x\n", build_args={"HTTPS_PROXY": "http://p:1", "no_proxy": "x", "OTHER": "no",
                                                   "ALL_PROXY": "", "ftp_proxy": "f", "FTP_PROXY": "F"})
    (run,) = execs(g)
    assert run.proxy_env == ("HTTPS_PROXY=http://p:1", "https_proxy=http://p:1", "FTP_PROXY=F", "ftp_proxy=F",
                             "NO_PROXY=x", "no_proxy=x")
    assert run.env == (PATH_ENV,)
    assert g.target.config.config.env == (PATH_ENV,)


def test_dockerfile_env_proxy_stays_in_env() -> None:
    """`ENV HTTP_PROXY=...` is the Dockerfile's own environment: it stays in env (and the cache
    key); proxy_env still names the build arg's value, which BuildKit lets win at run time."""
    g = conv("FROM busybox\nENV HTTP_PROXY=http://own:1\nRUN x\n",
             build_args={"HTTP_PROXY": "http://p:1", "FTP_PROXY": "http://f:2"})
    (run,) = execs(g)
    assert run.env == (PATH_ENV, "HTTP_PROXY=http://own:1")
    assert run.proxy_env == ("HTTP_PROXY=http://p:1", "http_proxy=http://p:1", "FTP_PROXY=http://f:2",
                             "ftp_proxy=http://f:2")


def test_stage_from_stage_inherits_its_args() -> None:
    """BuildKit v0.25 (conformance-extra arg-inherited-from-base-stage): a stage built FROM another
    stage starts with that stage's ARGs and values; its own ARG of the same name wins."""
    g = conv("FROM busybox AS one\nARG V=1\nARG W\nARG U=u1\nFROM one AS two\nARG U=u2\nENV F=$V|$W|$U\n"
             "FROM two\nRUN x\n", build_args={"W": "w-cli"})
    (run,) = execs(g)
    assert run.env == (PATH_ENV, "F=1|w-cli|u2", "V=1", "W=w-cli", "U=u2")
    unrelated = conv("FROM busybox AS one\nARG V=1\nFROM busybox\nRUN x\n")
    assert execs(unrelated)[0].env == (PATH_ENV,)


def test_workdir_relative_mkdir_and_owner() -> None:
    g = conv("FROM busybox\nWORKDIR /a/b/c\nWORKDIR d\nWORKDIR ../e\nUSER app:staff\nWORKDIR /home/x\nWORKDIR /\n")
    mk = [v.op.actions[0] for v in chain(g.target.vertex) if isinstance(v.op, FileOp)]
    assert [(m.path, m.chown) for m in mk] == [("/a/b/c", None), ("/a/b/c/d", None), ("/a/b/c/e", None),
                                              ("/home/x", Chown(user="app", group="staff"))]
    assert all(isinstance(m, Mkdir) and m.mode == 0o755 and m.make_parents for m in mk)
    assert g.target.config.config.working_dir == "/"
    assert [h.created_by for h in g.target.history if h.created_by.startswith("WORKDIR")][-1] == "WORKDIR /"


def test_run_cwd_user_shell_network() -> None:
    g = conv('FROM busybox\nWORKDIR /w\nUSER 1000:50\nSHELL ["/bin/bash", "-e", "-c"]\n'
             "RUN --network=none echo hi\nRUN [\"ls\", \"-l\"]\n")
    a, b = execs(g)
    assert (a.args, a.cwd, a.user, a.network) == (("/bin/bash", "-e", "-c", "echo hi"), "/w", "1000:50", "none")
    assert b.args == ("ls", "-l") and b.network == "default"


def test_cmd_entrypoint_and_reset() -> None:
    g = conv('FROM busybox AS parent\nCMD ["parent-cmd"]\nFROM parent\nENTRYPOINT ["/bin/sh", "-c"]\n')
    cfg = g.target.config.config
    assert cfg.cmd is None and cfg.entrypoint == ("/bin/sh", "-c")
    g = conv('FROM busybox\nCMD ["x"]\nENTRYPOINT ep arg\n')
    cfg = g.target.config.config
    assert cfg.cmd == ("x",) and cfg.entrypoint == ("/bin/sh", "-c", "ep arg")


def test_scratch_config_and_metadata_instructions() -> None:
    g = conv("FROM scratch\nEXPOSE 80 8000-8001/udp\nVOLUME [\"/a\"]\nVOLUME /b /c\nSTOPSIGNAL SIGINT\n"
             "MAINTAINER me\nHEALTHCHECK NONE\nLABEL \"k 1\"=\"v 1\"\n")
    assert isinstance(g.target.vertex.op, ScratchSource)
    cfg = g.target.config.config
    assert cfg.env == (PATH_ENV,)
    assert cfg.exposed_ports == ("80/tcp", "8000/udp", "8001/udp")
    assert cfg.volumes == ("/a", "/b", "/c") and cfg.stop_signal == "SIGINT"
    assert cfg.healthcheck is not None and cfg.healthcheck.test == ("NONE",)
    assert dict(cfg.labels) == {"k 1": "v 1"}
    assert g.target.config.author == "me"
    assert all(h.vertex is None for h in g.target.history)


def test_onbuild_triggers_run_after_from_and_are_cleared() -> None:
    g = conv("FROM conformance/busybox-nonroot:1\nRUN cat onbuild.txt\n")
    first, second = execs(g)
    assert first.args[-1] == "echo onbuild-ran > /home/app/onbuild.txt"
    assert (first.user, first.cwd) == ("app", "/home/app")
    cfg = g.target.config.config
    assert cfg.onbuild == () and cfg.user == "app"
    assert dict(cfg.labels) == {"org.example.conformance.base": "busybox-nonroot"}
    # a stage FROM a stage with ONBUILD runs the trigger too
    g = conv("FROM busybox AS p\nONBUILD RUN echo child\nFROM p\nRUN x\n")
    assert [e.args[-1] for e in execs(g)] == ["echo child", "x"]
    g = conv("FROM busybox AS p\nONBUILD RUN echo child\n")
    assert g.target.config.config.onbuild == ("RUN echo child",) and not execs(g)


def test_history_accumulates_over_stages_and_base_history() -> None:
    g = conv("FROM busybox AS a\nENV X=1\nRUN one\nFROM a\nRUN two\n")
    assert [h.created_by for h in g.target.history] == ["ENV X=1", "RUN /bin/sh -c one # buildkit",
                                                        "RUN /bin/sh -c two # buildkit"]
    assert [h.vertex is not None for h in g.target.history] == [False, True, True]
    assert [h.created_by for h in g.target.base_history] == ["BusyBox base layer"]


def test_copy_sources_dest_and_flags() -> None:
    g = conv("FROM busybox\nWORKDIR /app\nCOPY --chown=app --chmod=640 ../../etc/x ./a b/ sub/\n"
             "COPY f .\nCOPY f /abs\nADD local.tar.gz /opt/\n", context_excludes=("*.tmp",))
    files = [v for v in chain(g.target.vertex) if isinstance(v.op, FileOp) and isinstance(v.op.actions[0], Copy)]
    c1, c2, c3, c4 = (v.op.actions[0] for v in files)
    assert c1.src_paths == ("etc/x", "a", "b") and c1.dest == "/app/sub/"
    assert c1.chown == Chown(user="app", group="") and c1.chmod == 0o640 and not c1.unpack
    assert c2.dest == "/app/" and c3.dest == "/abs" and c4.unpack
    ctx = files[0].inputs[c1.src]
    assert ctx.op == LocalSource(name="context", excludes=("*.tmp",))
    assert [h.created_by for h in g.target.history][1] == "COPY ../../etc/x ./a b/ sub/ # buildkit"


def test_copy_from_stage_index_image_and_named_contexts() -> None:
    res = FakeResolver()
    named = {"tools": NamedContext(kind="local", value="/tmp/tools"),
             "layout": NamedContext(kind="oci-layout", value="/tmp/lay", tag="v1"),
             "img": NamedContext(kind="image", value="alpine:3")}
    g = conv("FROM busybox AS b\nRUN build\nFROM scratch\nCOPY --from=b /out /\nCOPY --from=0 /out /0/\n"
             "COPY --from=debian:12 /etc/os-release /\nCOPY --from=tools t /\nCOPY --from=layout l /\n"
             "COPY --from=img i /\n", named_contexts=named, resolver=res)
    ops = [v for v in chain(g.target.vertex) if isinstance(v.op, FileOp)]
    froms = [v.inputs[v.op.actions[0].src].op for v in ops]
    assert isinstance(froms[0], ExecOp) and froms[0] == froms[1]
    assert froms[2] == ImageSource(ref="docker.io/library/debian:12", digest=froms[2].digest, platform=AMD64)
    assert froms[3] == LocalSource(name="tools")
    assert isinstance(froms[4], OCILayoutSource) and (froms[4].path, froms[4].tag) == ("/tmp/lay", "v1")
    assert isinstance(froms[5], ImageSource) and froms[5].ref == "docker.io/library/alpine:3"
    assert ("oci-layout", "/tmp/lay:v1") in res.calls


def test_from_named_context_replaces_image() -> None:
    g = conv("FROM base\nRUN x\n", named_contexts={"base": NamedContext(kind="image", value="debian:12")})
    assert chain(g.target.vertex)[0].op.ref == "docker.io/library/debian:12"


def test_add_url_checksum_and_chmod() -> None:
    g = conv("FROM busybox\nADD --checksum=sha256:" + "a" * 64 + " https://h/x/file.tgz?q=1 /d/\n"
             "ADD --chmod=755 http://h/ /u\n")
    a, b = (v for v in chain(g.target.vertex) if isinstance(v.op, FileOp))
    h1, h2 = a.inputs[1].op, b.inputs[1].op
    assert isinstance(h1, HTTPSource) and (h1.filename, h1.checksum) == ("file.tgz", "sha256:" + "a" * 64)
    assert h2.filename == "__unnamed__" and b.op.actions[0].chmod == 0o755
    assert a.op.actions[0] == Copy(src=1, src_paths=("file.tgz",), dest="/d/")


def test_copy_heredoc_expansion_keeps_quotes() -> None:
    g = conv("FROM busybox\nARG N=w\nCOPY <<EOF <<'RAW' /etc/\nn=$N \"q\" '${N}' \\$N\nEOF\nraw $N\nRAW\n")
    v = g.target.vertex
    inline = v.inputs[1].op
    assert isinstance(inline, InlineSource)
    assert [(f.name, f.data, f.mode) for f in inline.files] == [("EOF", b"n=w \"q\" 'w' $N\n", 0o644),
                                                                 ("RAW", b"raw $N\n", 0o644)]
    assert [a.src_paths for a in v.op.actions] == [("EOF",), ("RAW",)]


def test_run_heredoc_forms() -> None:
    g = conv("FROM busybox\nRUN <<EOF\necho a\nEOF\nRUN python3 <<PY arg\nprint(1)\nPY\n"
             "RUN <<EOF\n#!/usr/bin/env python3\nprint(2)\nEOF\n")
    a, b, c = execs(g)
    assert a.args == ("/bin/sh", "-c", "echo a\n")
    assert b.args == ("/bin/sh", "-c", "python3 <<PY arg\nprint(1)\nPY")
    assert c.args == ("/bin/sh", "-c", "/dev/pipes/EOF") and c.mounts[0].target == "/dev/pipes/"


def test_run_mounts() -> None:
    g = conv("FROM busybox AS dep\nRUN make\nFROM busybox\nWORKDIR /w\n"
             "RUN --mount=type=bind,from=dep,src=out,dst=o --mount=type=cache,target=c,id=x,sharing=private "
             "--mount=type=secret,id=tok --mount=type=secret,id=t2,target=/s,required,mode=0440,uid=1,gid=2 "
             "--mount=type=bind,target=/ctx x\n")
    run_v = g.target.vertex
    bind, cache, sec, sec2, ctx = run_v.op.mounts
    assert (bind.type, bind.source, bind.target, bind.readonly) == ("bind", "/out", "/w/o", True)
    assert isinstance(run_v.inputs[bind.input].op, ExecOp)
    assert (cache.cache_id, cache.target, cache.sharing, cache.readonly, cache.input) == ("x", "/w/c", "private",
                                                                                         False, None)
    assert (sec.secret_id, sec.target, sec.mode, sec.required) == ("tok", "/run/secrets/tok", 0o400, False)
    assert (sec2.target, sec2.mode, sec2.uid, sec2.gid, sec2.required) == ("/s", 0o440, 1, 2, True)
    assert isinstance(run_v.inputs[ctx.input].op, LocalSource)
    g = conv("FROM busybox\nRUN --mount=type=cache,target=/var/cache/apt x\n")
    assert g.target.vertex.op.mounts[0].cache_id == "/var/cache/apt"


def test_vertex_names_and_locations() -> None:
    g = conv("FROM busybox AS build\nRUN a \\\n  b\nFROM scratch\nCOPY --from=build /x /\n", filename="my.Dockerfile")
    names = {v.name: v.source_location for v in g.topological()}
    assert names["[build 1/2] FROM docker.io/library/busybox"].start_line == 1
    run = next(v for v in g.topological() if isinstance(v.op, ExecOp))
    assert run.name == "[build 2/2] RUN a   b"
    assert (run.source_location.filename, run.source_location.start_line, run.source_location.end_line) == (
        "my.Dockerfile", 2, 3)
    assert g.target.vertex.name == "[2/2] COPY --from=build /x /"
    assert run.created_by == "RUN /bin/sh -c a   b # buildkit"


def test_unused_stages_are_not_resolved() -> None:
    res = FakeResolver()
    g = conv("FROM never:1 AS unused\nRUN exit 1\nFROM busybox:1\nRUN ok\n", resolver=res)
    assert res.calls == [("image", "busybox:1")]
    assert [e.args[-1] for e in execs(g)] == ["ok"]


def test_target_selection() -> None:
    text = "FROM busybox AS a\nRUN a\nFROM a AS b\nRUN b\nFROM b\nRUN c\n"
    assert [e.args[-1] for e in execs(conv(text, target="A"))] == ["a"]
    assert [e.args[-1] for e in execs(conv(text))] == ["a", "b", "c"]
    with pytest.raises(DockerfileError, match="could not be found"):
        conv(text, target="nope")


@pytest.mark.parametrize("text,line,fragment", [
    ("RUN echo\n", 1, "no build stage"),
    ("# only a comment\n", None, "file with no instructions"),
    ("FROM busybox AS a\nCOPY --from=b /x /\nFROM busybox AS b\nCOPY --from=a /y /\n", 2, "defined before"),
    ("FROM busybox AS a\nRUN --mount=from=b,target=/m x\nFROM busybox AS b\nCOPY --from=a /y /\n", 2,
     "defined before"),
    ("FROM busybox AS a\nCOPY --from=1 /x /\nFROM busybox AS b\nCOPY --from=a /y /\n", 2, "defined before"),
    ("FROM busybox AS a\nCOPY --from=a /x /\n", 2, "circular dependency"),
    ("FROM busybox\nRUN --mount=type=nope,target=/x y\n", 2, "mount type"),
    ("FROM busybox\nRUN --mount=type=cache y\n", 2, "target"),
    ("FROM busybox\nRUN --mount=type=bind,target=/x,bogus=1 y\n", 2, "unexpected key"),
    ("FROM busybox\nRUN --mount=type=secret y\n", 2, "id"),
    ("FROM busybox\nRUN --mount=type=tmpfs,target=/t,size=lots y\n", 2, "size"),
    ("FROM busybox\nADD --checksum=sha256:00 local /\n", 2, "non-HTTP"),
    ("FROM busybox\nENV A=${B:?required}\n", 2, "required"),
    ("FROM busybox\nLABEL a='open\n", 2, "single-quote"),
    ("FROM busybox\nEXPOSE http\n", 2, "invalid containerPort"),
    ("FROM busybox\nVOLUME [\"\"]\n", 2, "empty"),
    ("FROM --platform=bogus busybox\n", 1, "invalid platform"),
    ("FROM busybox\nRUN --security=insecure x\n", 2, "security"),
])
def test_convert_errors(text: str, line: int | None, fragment: str) -> None:
    with pytest.raises(DockerfileError) as e:
        conv(text)
    assert e.value.line == line and fragment in e.value.message


def test_errors_raised_before_anything_is_resolved() -> None:
    res = FakeResolver()
    with pytest.raises(DockerfileError):
        conv("FROM busybox\nRUN ok\nFROM busybox\nNOPE x\n", resolver=res)
    assert res.calls == []


def test_exec_form_followed_by_text_is_shell_form() -> None:
    """dockerfile 1.19 reads the whole argument text as JSON: a JSON array followed by more text
    is shell form (20.10 decoded the first JSON value and ignored the rest)."""
    g = conv('FROM busybox\nRUN ["touch", "/x"] && touch /y\nCMD ["echo", "a"] trailing\n')
    (run,) = execs(g)
    assert run.args == ("/bin/sh", "-c", '["touch", "/x"] && touch /y')
    assert g.target.config.config.cmd == ("/bin/sh", "-c", '["echo", "a"] trailing')


@pytest.mark.parametrize("text", ['CMD ["a", 42]\n', 'RUN ["a", ["b"]]\n', 'ENTRYPOINT [null]\n',
                                  'SHELL ["sh", true]\n', 'VOLUME ["/a", 1]\n', 'COPY ["a", 2]\n',
                                  'HEALTHCHECK CMD ["a", 1.5]\n'])
def test_json_array_of_non_strings_is_refused(text: str) -> None:
    with pytest.raises(DockerfileError) as e:
        conv("FROM busybox\n" + text)
    assert e.value.line == 2 and "only strings" in e.value.message


@pytest.mark.parametrize("src", ["https://github.com/moby/buildkit.git#v0.10.1", "git@github.com:moby/buildkit.git",
                                 "git://example.com/r", "github.com/moby/buildkit"])
def test_add_git_fails_loudly(src) -> None:
    with pytest.raises(DockerfileError) as ei:
        conv(f"FROM busybox\nADD {src} /src\n")
    assert ei.value.line == 2 and "git repository" in str(ei.value)


@pytest.mark.parametrize("spec,want", [("app", Chown(user="app")), ("1000:50", Chown(user="1000", group="50")),
                                       (":50", Chown(user="", group="50"))])
def test_chown_specs(spec, want) -> None:
    g = conv(f"FROM busybox\nCOPY --chown={spec} a /a\n")
    (fop,) = [v.op for v in chain(g.target.vertex) if isinstance(v.op, FileOp)]
    assert fop.actions[0].chown == want


@pytest.mark.parametrize("text", ["COPY --chown=: a /a\n", "COPY --chown=${A}:${B} a /a\n",
                                  "ARG A\nARG B\nCOPY --chown=$A:$B a /a\n"])
def test_chown_with_empty_user_and_group_is_root(text: str) -> None:
    """BuildKit accepts an empty user and group (unset variables): 0:0."""
    g = conv("FROM busybox\n" + text)
    (fop,) = [v.op for v in chain(g.target.vertex) if isinstance(v.op, FileOp)]
    assert fop.actions[0].chown == Chown(user="", group="")


@pytest.mark.parametrize("dest,want", [("/d/.", "/d/"), ("sub/.", "/w/sub/"), (".", "/w/"), ("/d", "/d")])
def test_destination_ending_in_slash_dot_is_a_directory(dest: str, want: str) -> None:
    g = conv(f"FROM busybox\nWORKDIR /w\nCOPY a {dest}\n")
    (copy,) = [a for v in chain(g.target.vertex) if isinstance(v.op, FileOp) for a in v.op.actions
               if isinstance(a, Copy)]
    assert copy.dest == want


def test_add_checksum_takes_one_source() -> None:
    with pytest.raises(DockerfileError) as ei:
        conv("FROM busybox\nADD --checksum=sha256:" + "0" * 64 + " http://h/a http://h/b /d/\n")
    assert "multiple sources" in str(ei.value)


def test_copy_from_is_taken_as_written() -> None:
    """BuildKit 20.10 expands no ARG in COPY --from (err-copy-from-arg-unexpanded): `$S` is not
    the stage `build` but an image reference, handed to the resolver as written."""
    res = FakeResolver()
    try:
        conv("ARG S=build\nFROM busybox AS build\nRUN true\nFROM busybox\nCOPY --from=$S /a /a\n", resolver=res)
    except DockerfileError:
        pass
    assert ("image", "$S") in res.calls


@pytest.mark.parametrize("text,chmod", [("0640", 0o640), ("4755", 0o4755), ("7777", 0o7777), ("0", 0)])
def test_chmod_octal_keeps_special_bits(text, chmod) -> None:
    """dockerfile 1.19 keeps setuid/setgid/sticky bits of an octal --chmod (public case copy-chmod)."""
    g = conv(f"FROM busybox\nCOPY --chmod={text} a /a\n")
    (fop,) = [v.op for v in chain(g.target.vertex) if isinstance(v.op, FileOp)]
    assert fop.actions[0].chmod == chmod


@pytest.mark.parametrize("text,words", [("999", "invalid chmod parameter: '999'"), ("77777", "between 0 and 07777"),
                                        ("08", "octal string"), ("abc", "invalid syntax"), ("u+y", "invalid syntax"),
                                        ("u+x,", "invalid syntax")])
def test_chmod_refusals_as_dockerfile_1_19(text, words) -> None:
    """Non-octal digits and modes above 07777 are refused (conformance-extra err2-copy-chmod-not-octal,
    err2-copy-chmod-too-large, err2-add-chmod-word)."""
    for kw in ("COPY", "ADD"):
        with pytest.raises(DockerfileError, match=words) as e:
            conv(f"FROM busybox\n{kw} --chmod={text} a /a\n")
        assert e.value.line == 2


@pytest.mark.parametrize("text", ["u+x", "u+x,go=rX", "=", "g=u", "u=rwxs,g=x,o=t"])
def test_symbolic_chmod_reaches_the_file_op(text) -> None:
    """dockerfile 1.19 takes symbolic modes; the file op applies them to each entry's own mode
    (conformance-extra ok2-copy-chmod-word, copy-chmod-symbolic-forms)."""
    g = conv(f"FROM busybox\nCOPY --chmod={text} a /a\n")
    (fop,) = [v.op for v in chain(g.target.vertex) if isinstance(v.op, FileOp)]
    assert fop.actions[0].chmod is None and fop.actions[0].chmod_symbolic == text


def test_bare_cmd_and_run_and_late_checks() -> None:
    g = conv("FROM busybox\nRUN\nCMD\nONBUILD BOGUS x\nEXPOSE 80/\nSTOPSIGNAL sigrtmin+3\nRUN echo hi \\")
    runs = execs(g)
    assert runs[0].args == ("/bin/sh", "-c", "") and runs[1].args == ("/bin/sh", "-c", "echo hi")
    cfg = g.target.config.config
    assert cfg.cmd == ("/bin/sh", "-c", "") and cfg.onbuild == ("BOGUS x",)
    assert cfg.exposed_ports == ("80/tcp",) and cfg.stop_signal == "sigrtmin+3"


@pytest.mark.parametrize("text", ["FROM busybox\nSTOPSIGNAL SIGBOGUS\n", "FROM busybox\nSTOPSIGNAL 0\n",
                                  "# escape=x\nFROM busybox\n"])
def test_rejected_like_buildkit(text) -> None:
    with pytest.raises(DockerfileError):
        conv(text)


class _FailingResolver(FakeResolver):
    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error

    def resolve_image(self, ref, platform):  # type: ignore[no-untyped-def]
        raise self.error

    def resolve_oci_layout(self, path, tag, platform):  # type: ignore[no-untyped-def]
        raise self.error


@pytest.mark.parametrize("make", [lambda: RegistryError("manifest unknown", status=404, codes=("MANIFEST_UNKNOWN",)),
                                  lambda: NotFoundError("no such image", status=404),
                                  lambda: SourceError("oci layout missing")])
@pytest.mark.parametrize("text,line", [("FROM busybox\nRUN x\n", 1),
                                       ("FROM busybox AS a\nFROM a\nCOPY --from=img:1 /x /\n", 3)])
def test_resolver_errors_keep_their_type_and_get_the_line(make, text: str, line: int) -> None:  # type: ignore[no-untyped-def]
    """A resolver's error reaches the caller as itself (same type, same fields), located at the
    instruction that named the image."""
    error = make()
    res = _FailingResolver(error) if line == 1 else _OnlyFails(error, "img:1")
    with pytest.raises(type(error)) as e:
        conv(text, resolver=res)
    assert e.value is error and not isinstance(e.value, DockerfileError)
    assert e.value.location == f"Dockerfile:{line}"
    assert str(e.value).startswith(f"Dockerfile:{line}: ")


def test_named_oci_layout_resolver_error_keeps_type() -> None:
    err = SourceError("no index.json")
    named = {"base": NamedContext(kind="oci-layout", value="/nowhere")}
    with pytest.raises(SourceError) as e:
        conv("FROM busybox\nRUN x\nFROM base\n", named_contexts=named, resolver=_FailingResolver(err))
    assert str(e.value) == "Dockerfile:3: no index.json"


class _OnlyFails(FakeResolver):
    def __init__(self, error: Exception, ref: str) -> None:
        super().__init__()
        self.error, self.ref = error, ref

    def resolve_image(self, ref, platform):  # type: ignore[no-untyped-def]
        if ref == self.ref:
            raise self.error
        return super().resolve_image(ref, platform)


@pytest.mark.parametrize("text,named", [
    ("FROM scratch\n", {}),
    ("FROM scratch\nCOPY --from=busybox /etc/passwd /p\n", {}),
    ("FROM busybox AS b\nFROM scratch\nCOPY --from=b /etc/passwd /p\n", {}),
    ("FROM scratch AS a\nCOPY f /\nFROM a\nENV B=2\n", {}),
    ("FROM tools\n", {"tools": NamedContext(kind="local", value="/tmp/tools")}),
])
def test_stage_without_image_has_working_dir_root(text, named) -> None:
    """BuildKit v0.25 writes WorkingDir "/" (and the default PATH) for FROM scratch and a local
    named context, whatever the stage copies in later (checked against dockerd 28.5.2)."""
    cfg = conv(text, named_contexts=named).target.config.config
    assert cfg.working_dir == "/" and cfg.env[0].startswith("PATH=")


def test_image_without_working_dir_keeps_it_empty() -> None:
    """An image base whose config has no WorkingDir keeps it empty (BuildKit v0.25 does not add "/")."""
    cfg = conv("FROM busybox\nCOPY f /\nRUN true\n").target.config.config
    assert cfg.working_dir == ""


def test_volume_shell_form_split_on_blanks_then_expanded_as_one_word() -> None:
    """BuildKit v0.25 (conformance-extra volume-shell-form-words): the shell form is split on
    blanks before quotes are read, and each word is then expanded as a single word."""
    g = conv("FROM busybox\nENV V=\"/x /y\"\nVOLUME \"/b\" '/c' /d\\ e\nVOLUME $V\nVOLUME [\"$V/j\"]\n")
    assert g.target.config.config.volumes == ("/b", "/c", "/d", "/x /y", "/x /y/j", "e")


@pytest.mark.parametrize("text", ['VOLUME /a "/b c"\n', 'EXPOSE "80 81"\n', "VOLUME '/a b'\n"])
def test_quote_across_blank_is_unterminated(text) -> None:
    """A quote spanning a blank in VOLUME/EXPOSE is an unterminated quote in BuildKit v0.25
    (conformance-extra err2-volume-quote-across-blank, err2-expose-quote-across-blank)."""
    with pytest.raises(DockerfileError) as e:
        conv("FROM busybox\n" + text)
    assert e.value.line == 2


def test_expose_words_are_split_again_after_expansion() -> None:
    g = conv('FROM busybox\nENV P="80 81/udp"\nEXPOSE $P "82"\n')
    assert g.target.config.config.exposed_ports == ("80/tcp", "81/udp", "82/tcp")


@pytest.mark.parametrize("kind", ["cache", "tmpfs", "bind"])
def test_mount_without_target_is_at_working_dir(kind) -> None:
    """BuildKit v0.25 mounts a cache/tmpfs/bind mount without target= at the working directory
    (conformance-extra mount-no-target-at-workdir)."""
    g = conv(f"FROM busybox\nWORKDIR /w\nRUN --mount=type={kind} x\n")
    (m,) = g.target.vertex.op.mounts
    assert m.type == kind and m.target == "/w"
    if kind == "cache":
        assert m.cache_id == "/w"


@pytest.mark.parametrize("mount", ["type=cache", "type=tmpfs", "type=bind", "type=bind,target=/",
                                   "type=cache,target=/x/..", "type=secret,id=s,target=/"])
def test_mount_at_root_is_refused(mount) -> None:
    """`invalid mount target "/"` (BuildKit v0.25; conformance-extra err2-mount-no-target)."""
    with pytest.raises(DockerfileError, match='invalid mount target "/"') as e:
        conv(f"FROM busybox\nRUN --mount={mount} x\n")
    assert e.value.line == 2


def test_copy_sources_split_on_blanks_then_expanded_one_by_one() -> None:
    """dockerfile 1.19 (conformance-extra copy-source-words): quotes are read inside each
    blank-separated word; a variable holding a blank stays one source; JSON strings are expanded."""
    g = conv("FROM busybox\nARG N=\"a b.txt\"\nCOPY \"q'x.txt\" $N '/d/'\nCOPY [\"\\\"f.txt\\\"\", \"/e/\"]\n")
    fops = [v.op for v in chain(g.target.vertex) if isinstance(v.op, FileOp)]
    got = sorted((a.src_paths, a.dest) for op in fops for a in op.actions)
    assert got == [(("f.txt",), "/e/"), (("q'x.txt", "a b.txt"), "/d/")]


@pytest.mark.parametrize("text", ['COPY "a b.txt" /d/\n', "ADD 'a b' /d/\n", 'FROM "busybox x"\n'])
def test_quote_across_blank_in_copy_or_from_is_unterminated(text) -> None:
    """conformance-extra err2-copy-quote-across-blank: no quoting at the parser level."""
    with pytest.raises(DockerfileError):
        conv("FROM busybox\n" + text)


def test_escaped_blank_does_not_join_copy_words() -> None:
    """`COPY a\\ b.txt /d/` has the sources `a` and `b.txt` (conformance-extra err2-copy-escaped-blank)."""
    g = conv("FROM busybox\nCOPY a\\ b.txt /d/\n")
    (fop,) = [v.op for v in chain(g.target.vertex) if isinstance(v.op, FileOp)]
    assert fop.actions[0].src_paths == ("a", "b.txt")


def test_copy_exclude_is_not_expanded() -> None:
    """dockerfile 1.19 passes --exclude patterns as written (conformance-extra copy-exclude-not-expanded)."""
    g = conv("FROM busybox\nARG X=a.txt\nCOPY --exclude=$X --exclude=*.log dir /e/\n")
    (fop,) = [v.op for v in chain(g.target.vertex) if isinstance(v.op, FileOp)]
    assert fop.actions[0].exclude == ("$X", "*.log")
