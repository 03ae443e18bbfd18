"""The instruction-level forms every instruction shares, read as BuildKit's parser reads them:
the leading `--flags`, the JSON exec form, and whitespace-separated lists.

* `extract_flags(rest)` -> (flags, remainder): each leading word starting with `--` is a flag,
  with its quotes and escapes removed; a lone `--` ends the flags. Flags are not checked here
  (each instruction knows its own: frontend.instruction_words).
* `json_array(text)`: the exec form. None when `text` is not a JSON array (or has more text after
  it: that is shell form); `NotStringArray` (a ValueError) for a JSON array holding anything but
  strings, which BuildKit refuses instead of reading it as shell form.
* `whitespace_words(text)`: split on runs of blanks, no quoting (FROM, EXPOSE, COPY's non-JSON
  form at the parser level).
"""
from __future__ import annotations

import json
import re

__all__ = ["NotStringArray", "extract_flags", "json_array", "whitespace_words"]

_WHITESPACE = re.compile(r"[\t\v\f\r ]+")


class NotStringArray(ValueError):
    """A JSON array whose elements are not all strings."""


def _flag_word(text: str, i: int) -> tuple[str, int]:
    """The flag word starting at i (quotes removed, a backslash escapes the next character) and
    the index after it."""
    out: list[str] = []
    quote = ""
    while i < len(text):
        c = text[i]
        if not quote and c.isspace():
            break
        if quote and c == quote:
            quote = ""
        elif not quote and c in "'\"":
            quote = c
        elif c == "\\":
            if i + 1 < len(text):
                i += 1
                out.append(text[i])
        else:
            out.append(c)
        i += 1
    return "".join(out), i


def extract_flags(rest: str) -> tuple[list[str], str]:
    """The leading flags of an instruction's arguments (without their `--`-less check) and the
    text after them, stripped."""
    flags: list[str] = []
    i = 0
    while True:
        while i < len(rest) and rest[i].isspace():
            i += 1
        if not rest.startswith("--", i):
            break
        word, i = _flag_word(rest, i)
        if word == "--":
            break
        if word:
            flags.append(word)
    return flags, rest[i:].strip()


def _no_constant(name: str) -> object:
    raise ValueError(f"not JSON: {name}")    # NaN, Infinity: Go's decoder refuses them


def json_array(text: str) -> list[str] | None:
    """The exec form of `text` (see the module doc)."""
    text = text.strip()
    if not text.startswith("["):
        return None
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except ValueError:
        return None
    if not isinstance(value, list):
        return None
    if not all(isinstance(x, str) for x in value):
        raise NotStringArray("the JSON array must contain only strings")
    return value


def whitespace_words(text: str) -> list[str]:
    text = text.strip(" \t\v\f\r")
    return _WHITESPACE.split(text) if text else []
