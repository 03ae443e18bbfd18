"""Word expansion table (frontend/shell.py), after the Dockerfile reference and BuildKit's lexer."""
from __future__ import annotations

import pytest

from frontend.shell import ExpansionError, expand_word, expand_words, split_raw_words, unquote

ENV = {"A": "alpha", "EMPTY": "", "FILE": "archive.tar.gz", "PATHV": "/usr/local/lib/app",
       "VERSION": "v1.2.3-rc1", "SP": "a b", "SET": "value"}


@pytest.mark.parametrize("word,expected", [
    ("plain", "plain"),
    ("$A", "alpha"),
    ("${A}", "alpha"),
    ("${A}x", "alphax"),
    ("$Ax", ""),
    ("pre${UNSET}post", "prepost"),
    ("$SET/$UNSET/", "value//"),
    ("$", "$"),
    ("a$", "a$"),
    ("$-x", "x"),
    # :- :+ and the colon-less forms
    ("${A:-d}", "alpha"), ("${EMPTY:-d}", "d"), ("${UNSET:-d}", "d"),
    ("${A:+alt}", "alt"), ("${EMPTY:+alt}", ""), ("${UNSET:+alt}", ""),
    ("${A-d}", "alpha"), ("${EMPTY-d}", ""), ("${UNSET-d}", "d"),
    ("${A+alt}", "alt"), ("${EMPTY+alt}", "alt"), ("${UNSET+alt}", ""),
    ("${UNSET:-$A}", "alpha"), ("${UNSET:-${A:+nested}}", "nested"),
    ("${UNSET:-two words}", "two words"),
    ("[${EMPTY-unused}]", "[]"),
    # trims
    ("${FILE%%.*}", "archive"), ("${FILE#*.}", "tar.gz"), ("${FILE##*.}", "gz"), ("${FILE%.*}", "archive.tar"),
    ("${PATHV%/*}", "/usr/local/lib"), ("${PATHV##*/}", "app"), ("${PATHV#/}", "usr/local/lib/app"),
    ("${VERSION#v}", "1.2.3-rc1"), ("${VERSION%%.*}", "v1"), ("${VERSION#v?.}", "2.3-rc1"),
    # BuildKit's patterns have no bracket expressions: "[" and "]" are literal characters
    ("${VERSION#nomatch}", "v1.2.3-rc1"), ("${UNSET#x}", ""), ("${FILE%.[gt]z}", "archive.tar.gz"),
    ("${FILE%.[!g]z}", "archive.tar.gz"),
    # replace
    ("${VERSION//./}", "v123-rc1"), ("${VERSION/-/+}", "v1.2.3+rc1"), ("${VERSION/./_}", "v1_2.3-rc1"),
    ("${VERSION//[0-9]/N}", "v1.2.3-rc1"), ("${VERSION/x/y}", "v1.2.3-rc1"), ("${FILE/.*/}", "archive"),
    # quotes and escapes
    ('"$A gamma"', "alpha gamma"), ("'${A}'", "${A}"), ("\\$A", "$A"), ("$A\\ delta", "alpha delta"),
    ('"a\\"b"', 'a"b'), ('"a\\xb"', "a\\xb"), ('"\\$A"', "$A"), ("'a\\b'", "a\\b"),
    ('"${A}"\'$A\'', "alpha$A"), ('""', ""), ("a\\\\b", "a\\b"),
    ('"$SP"', "a b"),
])
def test_expand_word(word: str, expected: str) -> None:
    assert expand_word(word, ENV) == expected


@pytest.mark.parametrize("word", ["'open", '"open', "${A", "${A:-x", "${}", "${A:x}", "${A^}", "${UNSET:?must be set}",
                                  "${UNSET?x}"])
def test_expand_word_errors(word: str) -> None:
    with pytest.raises(ExpansionError):
        expand_word(word, ENV)


def test_question_mark_passes_when_set() -> None:
    assert expand_word("${A:?x}", ENV) == "alpha"
    assert expand_word("${EMPTY?x}", ENV) == ""


def test_skip_quotes_keeps_quote_characters() -> None:
    text = "name=$A \"quoted $A\" 'single $A' \\$A\n"
    assert expand_word(text, ENV, skip_quotes=True) == "name=alpha \"quoted alpha\" 'single alpha' $A\n"


def test_backtick_escape() -> None:
    assert expand_word("`$A", ENV, escape="`") == "$A"
    assert expand_word("C:\\dir", ENV, escape="`") == "C:\\dir"


@pytest.mark.parametrize("text,expected", [
    ("80 443/tcp", ["80", "443/tcp"]),
    ("$SP c", ["a", "b", "c"]),
    ('"$SP" c', ["a b", "c"]),
    ("  lead   trail  ", ["lead", "trail"]),
    ('"" x', ["", "x"]),
])
def test_expand_words(text: str, expected: list[str]) -> None:
    assert expand_words(text, ENV) == expected


def test_split_raw_words_keeps_quotes() -> None:
    assert split_raw_words('B=${A}-beta C="$A gamma" D=$A\\ delta') == ["B=${A}-beta", 'C="$A gamma"', "D=$A\\ delta"]
    assert split_raw_words("x='a b' y") == ["x='a b'", "y"]


def test_unquote() -> None:
    assert unquote('"a b"') == "a b"
    assert unquote("'$A'") == "$A"
    assert unquote("a\\ b") == "a b"


@pytest.mark.parametrize("word", ["${VERSION/x}"])
def test_buildkit_rejects(word):
    """`${V/p}` needs its second slash (BuildKit: "missing '/' in ${}")."""
    from frontend.shell import ExpansionError
    with pytest.raises(ExpansionError):
        expand_word(word, ENV)


@pytest.mark.parametrize("word,want", [
    ("a$@b", "ab"), ("a$#b", "ab"), ("a$!b", "ab"), ("a$$b", "ab"), ("a$12b", "ab"), ("$é", ""),
    ("${é:-d}", "d"), ("$%x", "$%x"), ("$ x", "$ x"),
])
def test_buildkit_names(word, want):
    """BuildKit's processName: special parameters and all leading digits are (unset) names, names
    may hold Unicode letters (conformance-extra px-dollar-*)."""
    assert expand_word(word, ENV) == want


def test_backtick_escape_splits_words():
    from frontend.convert import FrontendOptions, convert
    from test_frontend_fakes import FakeResolver
    g = convert('# escape=`\nFROM busybox\nLABEL g2="c:\\x\\" g3=multi\n',
                FrontendOptions(resolver=FakeResolver()))
    assert dict(g.target.config.config.labels) == {"g2": "c:\\x\\", "g3": "multi"}
