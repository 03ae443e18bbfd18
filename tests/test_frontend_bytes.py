"""Dockerfiles that are not UTF-8: BuildKit builds them and hands the bytes to the step unchanged.

The frontend takes the file's bytes (`convert(data: bytes, opts)`), keeps every undecodable byte
as a surrogate escape in the ops (so `os.fsencode` gives the original bytes back when the step
runs), and writes U+FFFD for it where text must be valid UTF-8 (image config, history, vertex
names, error messages). No traceback anywhere.
"""
from __future__ import annotations

import json
import os

import pytest

from builder.errors import DockerfileError
from builder.image.oci import Platform
from builder.solve.graph import BuildGraph
from builder.solve.ops import ExecOp, FileOp, InlineSource, Mkdir
from frontend import instructions as I
from frontend.convert import FrontendOptions, convert
from frontend.instruction_parse import parse_instruction
from frontend.parse import parse_dockerfile
from frontend.text import decode_dockerfile, valid_strings, valid_utf8
from test_frontend_fakes import FakeResolver

AMD64 = Platform(os="linux", architecture="amd64")
DOCKERFILE = (b"FROM busybox\n"
              b"LABEL a=\xff b=ok\n"
              b"ENV E=caf\xe9\n"
              b"RUN echo \xff > /x\n"
              b"COPY <<EOF /f\n\xfa\nEOF\n"
              b"WORKDIR /d\xff\n")


def _opts() -> FrontendOptions:
    return FrontendOptions(platform=AMD64, build_platform=AMD64, resolver=FakeResolver())


def test_decode_keeps_every_byte() -> None:
    data = b"RUN echo \xff\xfe caf\xc3\xa9\n"
    text = decode_dockerfile(data)
    assert os.fsencode(text) == data and "café" in text
    assert decode_dockerfile("FROM a\n") == "FROM a\n"
    assert valid_utf8(text) == "RUN echo \ufffd\ufffd café\n"
    assert valid_strings(("a\udcff", ("b",), 3)) == ("a\ufffd", ("b",), 3)


def test_parse_keeps_undecodable_bytes_in_run_and_label() -> None:
    raws = parse_dockerfile(decode_dockerfile(DOCKERFILE)).instructions
    assert [r.keyword for r in raws] == ["FROM", "LABEL", "ENV", "RUN", "COPY", "WORKDIR"]
    assert [(r.start_line, r.end_line) for r in raws][3:5] == [(4, 4), (5, 7)]
    label, run = (parse_instruction(r) for r in (raws[1], raws[3]))
    assert isinstance(label, I.Label) and isinstance(run, I.Run)
    assert os.fsencode(label.pairs[0][1]) == b"\xff" and label.pairs[1] == ("b", "ok")
    assert os.fsencode(run.command.args[0]) == b"echo \xff > /x"
    assert os.fsencode(raws[4].heredocs[0].content) == b"\xfa\n"


def test_undecodable_keyword_is_a_dockerfile_error_with_valid_text() -> None:
    with pytest.raises(DockerfileError) as e:
        convert(b"FROM busybox\nR\xffN x\n", _opts())
    assert e.value.line == 2
    str(e.value).encode("utf-8")            # printable anywhere


def _check_graph(g: BuildGraph) -> None:
    ops = [v.op for v in g.topological()]
    (run,) = [op for op in ops if isinstance(op, ExecOp)]
    assert os.fsencode(run.args[-1]) == b"echo \xff > /x"          # the step gets the bytes
    assert "E=caf\udce9" in run.env and os.fsencode(run.env[-1]) == b"E=caf\xe9"
    (inline,) = [op for op in ops if isinstance(op, InlineSource)]
    assert inline.files[0].data == b"\xfa\n"
    (mkdir,) = [op.actions[0] for op in ops if isinstance(op, FileOp) and isinstance(op.actions[0], Mkdir)]
    assert os.fsencode(mkdir.path) == b"/d\xff"
    cfg = json.loads(g.target.config.to_bytes())                  # valid JSON, U+FFFD per byte
    assert cfg["config"]["Labels"] == {"a": "\ufffd", "b": "ok"}
    assert cfg["config"]["WorkingDir"] == "/d\ufffd" and "E=caf\ufffd" in cfg["config"]["Env"]
    history = [h.created_by for h in g.target.history]
    assert "RUN /bin/sh -c echo \ufffd > /x # buildkit" in history and "LABEL a=\ufffd b=ok" in history
    for text in [*history, *(v.name for v in g.topological())]:
        text.encode("utf-8")


def test_convert_non_utf8_end_to_end() -> None:
    _check_graph(convert(DOCKERFILE, _opts()))
