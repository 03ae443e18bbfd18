"""BuildKit's own parser and shell-lexer test data, run against pybuild's frontend.

The data (moby/buildkit at a fixed commit, see shared/peer-tests/README.md) is read from the
shared folder at test time (`shared_path`: `$PYBUILD_SHARED` or `../shared`); missing data fails.
One test per Dockerfile / table row, so failures are counted:

* parser/testfiles/*: pybuild's parse, dumped in BuildKit's AST form (frontend.dump), equals
  BuildKit's `result`;
* parser/testfiles-negative/*: refused with a DockerfileError by frontend.parse +
  frontend.instruction_parse;
* parser/testfile-line: the start and end line of each instruction (BuildKit's
  TestLineInformation);
* shell/envVarTest: each `A`/`U` row expands with expand_word as BuildKit's ProcessWord does,
  in lex_test.go's environment (PWD=/home SHELL=bash KOREAN=한국어 NULL=), `error` meaning an
  error;
* shell/wordsTest: each row splits with expand_words as BuildKit's ProcessWords does, in the
  environment of the `ENV` lines above it (lex_test.go's normal mode: its second mode re-reads
  an exhausted file and checks nothing);
* heredoc_test_dockerfiles.json: the heredocs of each instruction, as parser_heredoc_test.go
  expects them (the expectations are written here; the Dockerfiles come from the data).

Rows listed in tests/peer-known-failures.txt (`ID reason`) are xfail(strict=True): they must fail,
and the list shrinks when one passes.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from builder.errors import DockerfileError
from conftest import REPO, shared_dir, shared_path
from frontend.dump import dump_dockerfile
from frontend.instruction_parse import parse_instruction
from frontend.parse import parse_dockerfile
from frontend.shell import ExpansionError, expand_word, expand_words

BK = ("peer-tests", "buildkit")
PARSER = (*BK, "frontend", "dockerfile", "parser")
SHELL = (*BK, "frontend", "dockerfile", "shell")
MISSING = "<peer data missing>"
LEX_ENV = {"PWD": "/home", "SHELL": "bash", "KOREAN": "한국어", "NULL": ""}


def _known() -> dict[str, str]:
    out = {}
    for line in (REPO / "tests" / "peer-known-failures.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, reason = line.partition(" ")
            out[key] = reason.strip()
    return out


KNOWN = _known()


def _params(ids: list[str], values: list) -> list:  # type: ignore[type-arg]
    """pytest params, xfail(strict) for the known failures; one failing MISSING param if empty."""
    if not ids:
        return [pytest.param(MISSING, id=MISSING)]
    out = []
    for i, v in zip(ids, values):
        marks = [pytest.mark.xfail(strict=True, reason=KNOWN[i])] if i in KNOWN else []
        out.append(pytest.param(v, id=i, marks=marks))
    return out


def _subdirs(*parts: str) -> list[str]:
    d = shared_dir().joinpath(*parts)
    return sorted(p.name for p in d.iterdir() if (p / "Dockerfile").is_file()) if d.is_dir() else []


def _lines(*parts: str) -> list[tuple[int, str]]:
    f = shared_dir().joinpath(*parts)
    if not f.is_file():
        return []
    return list(enumerate(f.read_text(encoding="utf-8").split("\n"), start=1))


def _env_rows() -> list[tuple[str, tuple[str, str]]]:
    rows = []
    for n, line in _lines(*SHELL, "envVarTest"):
        if line.startswith("#") or not line.strip():
            continue
        platform, source, expected = (w.strip() for w in line.strip().split("|"))
        if platform in ("A", "U"):
            rows.append((f"envVarTest:{n}", (source, expected)))
    return rows


def _word_rows() -> list[tuple[str, tuple[str, list[str], dict[str, str]]]]:
    rows = []
    env: dict[str, str] = {}
    for n, line in _lines(*SHELL, "wordsTest"):
        if line.startswith("#") or not line:
            continue
        if line.startswith("ENV "):
            k, _, v = line[3:].lstrip(" ").partition("=")
            env[k] = v
            continue
        test, expected = line.split("|")
        rows.append((f"wordsTest:{n}", (test.strip(), expected.lstrip(" ").split(","), dict(env))))
    return rows


def _parse_all(text: str) -> None:
    parsed = parse_dockerfile(text)
    for raw in parsed.instructions:
        parse_instruction(raw, escape=parsed.escape)


# ------------------------------------------------------------------ parser

POSITIVE = _subdirs(*PARSER, "testfiles")


@pytest.mark.parametrize("name", _params([f"testfiles:{n}" for n in POSITIVE], POSITIVE))
def test_parser_dump_matches_buildkit(name: str) -> None:
    d = shared_path(*PARSER, "testfiles", name)
    text = (d / "Dockerfile").read_bytes().decode("utf-8", "surrogateescape")
    expected = (d / "result").read_text(encoding="utf-8").replace("\r\n", "\n").splitlines()
    assert dump_dockerfile(parse_dockerfile(text)) == expected


NEGATIVE = _subdirs(*PARSER, "testfiles-negative")


@pytest.mark.parametrize("name", _params([f"testfiles-negative:{n}" for n in NEGATIVE], NEGATIVE))
def test_parser_refuses_what_buildkit_refuses(name: str) -> None:
    text = (shared_path(*PARSER, "testfiles-negative", name) / "Dockerfile").read_text(encoding="utf-8")
    with pytest.raises(DockerfileError):
        _parse_all(text)


def test_line_information() -> None:
    text = shared_path(*PARSER, "testfile-line", "Dockerfile").read_text(encoding="utf-8")
    raws = parse_dockerfile(text).instructions
    assert [(r.start_line, r.end_line) for r in raws] == [(5, 5), (11, 12), (17, 31)]


# ------------------------------------------------------------------ shell lexer

ENV_ROWS = _env_rows()


@pytest.mark.parametrize("row", _params([i for i, _ in ENV_ROWS], [r for _, r in ENV_ROWS]))
def test_env_var_row(row: tuple[str, str]) -> None:
    if row == MISSING:
        shared_path(*SHELL, "envVarTest")
    source, expected = row
    if expected == "error":
        with pytest.raises(ExpansionError):
            expand_word(source, LEX_ENV)
    else:
        assert expand_word(source, LEX_ENV) == expected


WORD_ROWS = _word_rows()


@pytest.mark.parametrize("row", _params([i for i, _ in WORD_ROWS], [r for _, r in WORD_ROWS]))
def test_words_row(row: tuple[str, list[str], dict[str, str]]) -> None:
    if row == MISSING:
        shared_path(*SHELL, "wordsTest")
    test, expected, env = row
    try:
        got = expand_words(test, env)
    except ExpansionError:
        got = ["error"]
    assert got == expected


# ------------------------------------------------------------------ heredocs

def _doc(name: str, content: str = "", expand: bool = True, chomp: bool = False) -> tuple:  # type: ignore[type-arg]
    return (name, content, expand, chomp)


# parser_heredoc_test.go's expectations for the first Dockerfile, from its second instruction on
# (FileDescriptor is not kept by pybuild: `3<<EMPTY2` is checked by name only).
HEREDOCS_EXPECTED: list[list[tuple]] = [  # type: ignore[type-arg]
    [], [], [], [],                                        # ENV, RUN ls, USER <<INVALID, INVALID
    [_doc("EMPTY")], [_doc("EMPTY2")], [],                 # RUN "<<NOHEREDOC"
    [_doc("INDENT", "\tfoo\n\tbar\n")],
    [_doc("UNINDENT", "\tbaz\n\tquux\n", chomp=True)],
    [_doc("UNINDENT2", "\tbaz\n\tquux\n", chomp=True)],
    [_doc("EXPAND", "\texpand $NAME\n", chomp=True)],
    [_doc("NOEXPAND", "\tdon't expand $NAME\n", expand=False, chomp=True)],
    [_doc("COPY", "echo hello world\necho foo bar\n")],
    [_doc("COMMENT", "# internal comment\necho hello world\necho foo bar # trailing comment\n")],
    [_doc("MOUNT", "echo hello\n")],
    [_doc("FILE1", "content 1\n"), _doc("FILE2", "content 2\n")],
    [_doc("EOF", "\"foo\"\n'bar'\n")],
    [_doc("X", "Y\n"), _doc("Y", "X\n")],
    [_doc("COMPLEX", "print('hello world')\n")],
    [_doc("file.txt", "hello world\n")],
    [_doc("eof", "echo foo\n", expand=False)],
    [_doc("eo'f", "echo foo\n")],
    [_doc("eo'f", "echo foo\n", expand=False)],
    [_doc("one two", "echo bar\n", expand=False)],
    [_doc("$EOF")],
    [_doc("EOF")],                                         # RUN <<  EOF
    [_doc("EOF")],                                         # RUN <<  EOF  > foo
]


def _heredoc_files() -> list[str]:
    f = shared_path(*BK, "heredoc_test_dockerfiles.json")
    return list(json.loads(f.read_text(encoding="utf-8"))["dockerfiles"])


def test_heredocs_extracted() -> None:
    raws = parse_dockerfile(_heredoc_files()[0]).instructions
    got = [[(d.name, d.content, d.expand, d.chomp) for d in r.heredocs] for r in raws[1:]]
    assert got == HEREDOCS_EXPECTED


def test_heredoc_markers_in_json_are_text() -> None:
    raws = parse_dockerfile(_heredoc_files()[1]).instructions
    assert [r.heredocs for r in raws[1:4]] == [(), (), ()]


def test_known_failures_are_real_ids() -> None:
    ids = {f"testfiles:{n}" for n in POSITIVE} | {f"testfiles-negative:{n}" for n in NEGATIVE}
    ids |= {i for i, _ in ENV_ROWS} | {i for i, _ in WORD_ROWS}
    assert set(KNOWN) <= ids, sorted(set(KNOWN) - ids)


def test_data_is_where_the_readme_says() -> None:
    assert Path(shared_path(*BK, "..", "README.md")).is_file()
