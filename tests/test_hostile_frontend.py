"""Hostile Dockerfiles: every input ends in a graph or a DockerfileError with a line, within a
time bound — never a traceback, a hang or unbounded recursion (hypothesis, plus the inputs that
used to crash or hang)."""
from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from builder.errors import DockerfileError
from builder.image.oci import Platform
from frontend.convert import FrontendOptions, convert
from frontend.dockerignore import parse_dockerignore
from frontend.shell import ExpansionError, expand_word, expand_words
from test_frontend_fakes import FakeResolver

AMD64 = Platform(os="linux", architecture="amd64")
BOUND = 10.0        # seconds: generous; a hang or exponential blow-up takes far longer


def _convert(text: str | bytes) -> str:
    start = time.monotonic()
    try:
        convert(text, FrontendOptions(platform=AMD64, build_platform=AMD64, resolver=FakeResolver(),
                                      build_args={"A": "x", "B": "a" * 200}))
        outcome = "ok"
    except DockerfileError as e:
        assert e.line is not None or e.filename, e
        outcome = "refused"
    assert time.monotonic() - start < BOUND
    return outcome


KEYWORDS = ["FROM", "RUN", "COPY", "ADD", "ENV", "ARG", "LABEL", "WORKDIR", "USER", "CMD", "ENTRYPOINT",
            "EXPOSE", "VOLUME", "SHELL", "HEALTHCHECK", "ONBUILD", "STOPSIGNAL", "MAINTAINER", "from", "#"]
PIECES = ["scratch", "busybox", "AS", "s1", "--from=s1", "--mount=type=cache,target=/c", "--chown=${A}:${B}",
          "${A}", "${B:-x}", "${B//a/b}", "${B%%*a}", "$A", "[\"a\", \"b\"]", "[\"a\", 1]", "<<EOF", "EOF",
          "\\", "\\\\", "'", "\"", "=", "a=b", "/x", "*", "**", "\t", "${", "}", "\xff", "🐳", "-"]
LINE = st.builds(lambda k, ws: k + " " + " ".join(ws), st.sampled_from(KEYWORDS),
                 st.lists(st.sampled_from(PIECES), max_size=6))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(LINE, min_size=1, max_size=12))
def test_any_dockerfile_ends_in_a_graph_or_a_dockerfile_error(lines):
    _convert("FROM scratch\n" + "\n".join(lines) + "\n")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_end_in_a_graph_or_a_dockerfile_error(data):
    _convert(data)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="$:{}-+?#%/a*\\'\" ", max_size=40))
def test_any_word_expands_or_fails_with_an_expansion_error(word):
    start = time.monotonic()
    try:
        expand_word(word, {"a": "aaaa", "V": "a" * 100})
        expand_words(word, {"a": "aaaa"})
    except ExpansionError:
        pass
    assert time.monotonic() - start < BOUND


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(alphabet="[]!*?/a\\ ", max_size=12), max_size=6))
def test_any_dockerignore_parses_or_names_its_file(lines):
    try:
        parse_dockerignore("\n".join(lines))
    except DockerfileError as e:
        assert ".dockerignore" in str(e)


@pytest.mark.parametrize("name,text", [
    ("deep-default-nesting", "FROM scratch\nENV A=" + "${a:-" * 3000 + "x" + "}" * 3000 + "\n"),
    ("thousands-of-stages", "".join(f"FROM scratch AS s{i}\nCOPY --from=s{i - 1} / /\n" if i
                                    else "FROM scratch AS s0\n" for i in range(3000))),
    ("replace-backtracking", "FROM scratch\nARG V=" + "a" * 200 + "\nENV X=${V//*a*a*a*a*a*a*a*a*b/x}\n"),
    ("suffix-backtracking", "FROM scratch\nARG V=" + "a" * 3000 + "\nENV X=${V%%*a*a*b}\n"),
    ("long-line", "FROM scratch\nRUN " + "x" * 2_000_000 + "\n"),
])
def test_inputs_that_used_to_crash_or_hang(name, text):
    _convert(text)


def test_a_line_over_buildkits_limit_is_refused_with_its_line():
    with pytest.raises(DockerfileError, match="greater than max allowed size of 65535") as ei:
        convert("FROM scratch\nRUN " + "x" * 70000 + "\n",
                FrontendOptions(platform=AMD64, build_platform=AMD64, resolver=FakeResolver()))
    assert ei.value.line == 2
    convert("FROM scratch\nRUN " + "x" * 65000 + "\n", FrontendOptions(platform=AMD64, build_platform=AMD64,
                                                                         resolver=FakeResolver()))


def test_deep_nesting_is_refused_at_its_stated_cap():
    from frontend.shell import MAX_NESTING
    assert expand_word("${a:-" * MAX_NESTING + "x" + "}" * MAX_NESTING, {}) == "x"
    with pytest.raises(ExpansionError, match="nested more than"):
        expand_word("${a:-" * (MAX_NESTING + 1) + "x" + "}" * (MAX_NESTING + 1), {})
