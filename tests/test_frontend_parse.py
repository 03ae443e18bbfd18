"""frontend/parse.py and frontend/instructions.py: line ranges, continuations, heredocs, flags, errors."""
from __future__ import annotations

import pytest

from builder.errors import DockerfileError
from frontend import instructions as I
from frontend.instruction_parse import parse_instruction
from frontend.parse import parse_dockerfile


def parse(text: str) -> list[I.Instruction]:
    return [parse_instruction(r) for r in parse_dockerfile(text).instructions]


def test_line_ranges_and_continuations() -> None:
    text = ("FROM a\n"
            "RUN echo start && \\\n"
            "# dropped comment\n"
            "    echo one \\   \n"
            "\n"
            "    && echo two\n"
            "LABEL a=1 \\\n"
            "      b=2\n")
    raws = parse_dockerfile(text).instructions
    assert [(r.keyword, r.start_line, r.end_line) for r in raws] == [("FROM", 1, 1), ("RUN", 2, 6), ("LABEL", 7, 8)]
    assert raws[1].rest == "echo start &&     echo one     && echo two"
    assert raws[2].rest == "a=1       b=2"


def test_escape_directive_backtick() -> None:
    raws = parse_dockerfile("# escape=`\nFROM a\nRUN echo a `\n    b\nCOPY C:\\x /y\n").instructions
    assert raws[1].rest == "echo a     b"
    assert raws[2].rest == "C:\\x /y"


def test_heredoc_bodies_are_not_instructions() -> None:
    text = ("FROM a\n"
            "RUN <<EOF\n"
            "FROM b\n"
            "echo x \\\n"
            "EOF\n"
            "COPY <<A <<'B' /dst/\n"
            "one\n"
            "A\n"
            "two $X\n"
            "B\n"
            "RUN <<-EOT\n"
            "\tindented\n"
            "\tEOT\n"
            "USER u\n")
    raws = parse_dockerfile(text).instructions
    assert [(r.keyword, r.start_line, r.end_line) for r in raws] == [
        ("FROM", 1, 1), ("RUN", 2, 5), ("COPY", 6, 10), ("RUN", 11, 13), ("USER", 14, 14)]
    assert raws[1].heredocs[0].content == "FROM b\necho x \\\n"
    a, b = raws[2].heredocs
    assert (a.name, a.content, a.expand) == ("A", "one\n", True)
    assert (b.name, b.content, b.expand) == ("B", "two $X\n", False)
    assert raws[3].heredocs[0].chomp


def test_unterminated_heredoc() -> None:
    with pytest.raises(DockerfileError) as e:
        parse_dockerfile("FROM a\nRUN <<EOF\necho never\n")
    assert e.value.line == 2


def test_heredoc_marker_inside_quotes_is_text() -> None:
    raws = parse_dockerfile("FROM a\nRUN echo '<<EOF' > x\nUSER b\n").instructions
    assert raws[1].heredocs == () and len(raws) == 3


def test_typed_instructions() -> None:
    ins = parse('FROM --platform=linux/arm64 img:1 AS Build\n'
                'ARG A B=2\n'
                'ENV K v w\n'
                'ENV X="a b" Y=$X\n'
                'RUN --mount=type=cache,target=/c --mount=type=tmpfs,target=/t --network=none make all\n'
                'RUN ["echo", "hi"]\n'
                'COPY --from=build --chown=1:2 --chmod=640 --exclude=*.md --exclude=x --parents --link a b /d/\n'
                'ADD --checksum=sha256:00 http://x/y /z\n'
                'HEALTHCHECK --interval=1m30s --timeout=500ms --start-period=2s --retries=3 CMD curl x\n'
                'HEALTHCHECK NONE\n'
                'SHELL ["/bin/bash", "-c"]\n'
                'VOLUME ["/a", "/b"]\n'
                'VOLUME /c /d\n'
                'ONBUILD RUN echo hi\n')
    f, arg, env1, env2, run, run2, copy, add, hc, hc2, sh, v1, v2, ob = ins
    assert (f.image, f.name, f.platform) == ("img:1", "build", "linux/arm64")
    assert arg.pairs == (("A", None), ("B", "2"))
    assert env1.pairs == (("K", "v w"),)
    assert env2.pairs == (("X", '"a b"'), ("Y", "$X"))
    assert run.mounts == ("type=cache,target=/c", "type=tmpfs,target=/t") and run.network == "none"
    assert run.command == I.CommandLine(args=("make all",), json=False)
    assert run2.command == I.CommandLine(args=("echo", "hi"), json=True)
    assert (copy.from_, copy.chown, copy.chmod, copy.exclude, copy.parents, copy.link, copy.sources, copy.dest) == (
        "build", "1:2", "640", ("*.md", "x"), True, True, ("a", "b"), "/d/")
    assert add.is_add and add.checksum == "sha256:00"
    assert hc.test == ("CMD-SHELL", "curl x")
    assert (hc.interval, hc.timeout, hc.start_period, hc.retries) == (90 * 10**9, 5 * 10**8, 2 * 10**9, 3)
    assert hc2.test == ("NONE",)
    assert sh.args == ("/bin/bash", "-c")
    assert v1.paths == ("/a", "/b") and v1.json and v2.paths == ("/c", "/d") and not v2.json
    assert ob.expression == "RUN echo hi"


@pytest.mark.parametrize("text,line,fragment", [
    ("FROM a\nFROBNICATE the widget\n", 2, "unknown instruction: FROBNICATE"),
    ("FROM a\nCOPY --bogus=1 f /\n", 2, "Unknown flag: bogus"),
    ("FROM a\nRUN --from=x echo\n", 2, "Unknown flag: from"),
    ("FROM a\nADD --from=x f /\n", 2, "Unknown flag: from"),
    ("FROM a\nENV --x=1 A=b\n", 2, "Unknown flag: x"),
    ("FROM a\nCOPY onlyone\n", 2, "at least two arguments"),
    ("FROM a\nRUN --network=bridge echo\n", 2, "network"),
    ("FROM a\nCOPY --chown f /\n", 2, "Missing a value"),
    ("FROM a\nCOPY --link=maybe f /\n", 2, "boolean"),
    ("FROM a\nCOPY --from=a --from=b f /\n", 2, "Duplicate flag"),
    ("FROM a b\n", 1, "one or three arguments"),
    ("FROM a AS 1bad\n", 1, "invalid name"),
    ("FROM a\nENV ONLYKEY\n", 2, "two arguments"),
    ("FROM a\nLABEL a=1 b\n", 2, "can't find ="),
    ("FROM a\nSHELL /bin/sh -c\n", 2, "JSON"),
    ("FROM a\nHEALTHCHECK --interval=10 CMD x\n", 2, "duration"),
    ("FROM a\nHEALTHCHECK --interval=10us CMD x\n", 2, "1ms"),
    ("FROM a\nHEALTHCHECK BOGUS x\n", 2, "Unknown type"),
    ("FROM a\nHEALTHCHECK NONE extra\n", 2, "NONE"),
    ("FROM a\nHEALTHCHECK --retries=x CMD y\n", 2, "retries"),
    ("FROM a\nONBUILD FROM b\n", 2, "isn't allowed"),
    ("FROM a\nWORKDIR\n", 2, "WORKDIR"),
    ("FROM a\nCOPY <<EOF <<EOF\nx\nEOF\ny\nEOF\n", 2, "destination"),
])
def test_instruction_errors(text: str, line: int, fragment: str) -> None:
    with pytest.raises(DockerfileError) as e:
        parse(text)
    assert e.value.line == line
    assert fragment in e.value.message
    assert str(e.value).startswith(f"Dockerfile:{line}: ")


def test_escaped_escape_at_end_of_line_is_not_a_continuation() -> None:
    raws = parse_dockerfile("FROM a\nENV C trailing\\\\backslash\\\\\nENV D next\nRUN a \\\\\\\n  b\n").instructions
    assert [(r.keyword, r.rest, r.start_line, r.end_line) for r in raws] == [
        ("FROM", "a", 1, 1), ("ENV", "C trailing\\\\backslash\\\\", 2, 2), ("ENV", "D next", 3, 3),
        ("RUN", "a \\\\  b", 4, 5)]


def test_escaped_backtick_at_end_of_line_is_not_a_continuation() -> None:
    raws = parse_dockerfile("# escape=`\nFROM a\nRUN echo ``\nRUN b `\n c\n").instructions
    assert [r.rest for r in raws] == ["a", "echo ``", "b  c"]


@pytest.mark.parametrize("line,name,expand", [
    ("RUN <<  EOF", "EOF", True), ("RUN <<  EOF  > foo", "EOF", True), ("RUN <<- EOF", "EOF", True),
    ("RUN <<eo\\'f", "eo'f", True), ("RUN <<'e'o\\'f", "eo'f", False), ("RUN <<\"E\\\"F\"", 'E"F', False),
    ("COPY <<  EOF /dst", "EOF", True)])
def test_heredoc_delimiter_forms(line: str, name: str, expand: bool) -> None:
    raws = parse_dockerfile(f"FROM a\n{line}\nbody\n{name}\nUSER u\n").instructions
    (doc,) = raws[1].heredocs
    assert (doc.name, doc.content, doc.expand) == (name, "body\n", expand)
    assert raws[2].keyword == "USER"


@pytest.mark.parametrize("line", ["RUN <<'EOF", 'RUN <<"EOF', "RUN <<EOF'", 'COPY <<"EOF /d'])
def test_heredoc_delimiter_with_unbalanced_quote_is_an_error(line: str) -> None:
    with pytest.raises(DockerfileError) as e:
        parse_dockerfile(f"FROM a\n{line}\nx\nEOF\n")
    assert e.value.line == 2


def test_heredoc_in_onbuild_keeps_its_body_in_the_trigger() -> None:
    raws = parse_dockerfile("FROM a\nONBUILD RUN <<EOF\necho hi\nEOF\nUSER u\n").instructions
    assert [r.keyword for r in raws] == ["FROM", "ONBUILD", "USER"]
    (ins,) = [parse_instruction(raws[1])]
    assert isinstance(ins, I.Onbuild) and ins.expression == "RUN <<EOF\necho hi\nEOF"


def test_heredoc_markers_in_exec_form_are_text() -> None:
    raws = parse_dockerfile('FROM a\nRUN ["<<EOF"]\nONBUILD RUN ["<<EOF"]\nUSER u\n').instructions
    assert [(r.keyword, r.heredocs) for r in raws] == [("FROM", ()), ("RUN", ()), ("ONBUILD", ()), ("USER", ())]


def test_file_without_instructions_is_an_error() -> None:
    for text in ("", "\n\n", "# a comment\n  # another\n", "# escape=`\n"):
        with pytest.raises(DockerfileError):
            parse_dockerfile(text)


def test_crlf_and_bom() -> None:
    raws = parse_dockerfile("\ufeff# escape=`\r\nFROM a\r\nRUN b `\r\n c\r\n").instructions
    assert [r.rest for r in raws] == ["a", "b  c"]


@pytest.mark.parametrize("head,escape", [
    ("# escape=`\n", "`"), ("#  ESCAPE = `\n", "`"), ("# syntax=x\n# escape=`\n", "`"),
    ("# unknown=1\n# escape=`\n", "\\"), ("\n# escape=`\n", "\\"), ("# note\n# escape=`\n", "\\"),
    ("# escape=\n", "\\")])
def test_parser_directives(head: str, escape: str) -> None:
    assert parse_dockerfile(head + "FROM a\n").escape == escape


@pytest.mark.parametrize("head", ["# escape=x\n", "# escape=`\n# escape=`\n"])
def test_bad_or_repeated_escape_directive(head: str) -> None:
    with pytest.raises(DockerfileError):
        parse_dockerfile(head + "FROM a\n")
