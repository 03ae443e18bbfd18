"""The pieces instruction parsing shares: flags (`--name=value`), the exec form (JSON array) vs
shell form, `key=value` pairs, Go durations, and the error context of one raw instruction.
"""
from __future__ import annotations

import json
import re

from builder.errors import DockerfileError

from .instructions import CommandLine
from .parse import RawInstruction
from .shell import split_raw_words, unquote

__all__ = ["Ctx", "split_flags", "flag", "bool_flag", "maybe_json", "command", "pairs", "parse_duration"]


# flags each instruction accepts: name -> multi (may repeat)
_FLAGS: dict[str, dict[str, bool]] = {
    "FROM": {"platform": False},
    "RUN": {"mount": True, "network": False, "security": False},
    "COPY": {"from": False, "chown": False, "chmod": False, "link": False, "exclude": True, "parents": False},
    "ADD": {"chown": False, "chmod": False, "link": False, "exclude": True, "checksum": False,
            "keep-git-dir": False},
    "HEALTHCHECK": {"interval": False, "timeout": False, "start-period": False, "start-interval": False,
                    "retries": False},
}
_BOOL_FLAGS = {"link", "parents", "keep-git-dir"}


class Ctx:
    """One raw instruction being parsed: its words (honouring the escape token) and errors at
    its line."""

    def __init__(self, raw: RawInstruction, filename: str, escape: str = "\\") -> None:
        self.raw = raw
        self.filename = filename
        self.escape = escape          # the `# escape=` token: word splitting honours it

    def words(self, text: str) -> list[str]:
        return split_raw_words(text, escape=self.escape)

    def error(self, msg: str) -> DockerfileError:
        return DockerfileError(msg, filename=self.filename, line=self.raw.start_line)

    def base(self) -> dict:
        return {"line": self.raw.start_line, "end_line": self.raw.end_line, "original": self.raw.original}


def _scan_word(text: str, i: int) -> int:
    """Index after the raw word starting at i (quotes and escapes respected)."""
    quote = ""
    while i < len(text):
        c = text[i]
        if c == "\\" and quote != "'" and i + 1 < len(text):
            i += 2
            continue
        if quote:
            if c == quote:
                quote = ""
        elif c in "'\"":
            quote = c
        elif c.isspace():
            break
        i += 1
    return i


def split_flags(ctx: Ctx, rest: str) -> tuple[dict[str, list[str]], str]:
    allowed = _FLAGS.get(ctx.raw.keyword, {})
    flags: dict[str, list[str]] = {}
    i = 0
    while True:
        while i < len(rest) and rest[i].isspace():
            i += 1
        if not rest.startswith("--", i):
            break
        j = _scan_word(rest, i)
        word = unquote(rest[i + 2:j])
        i = j
        if not word:
            break
        name, eq, value = word.partition("=")
        if name not in allowed:
            raise ctx.error(f"Unknown flag: {name}")
        if not eq:
            if name not in _BOOL_FLAGS:
                raise ctx.error(f"Missing a value on flag: {name}")
            value = "true"
        if name in flags and not allowed[name]:
            raise ctx.error(f"Duplicate flag specified: {name}")
        flags.setdefault(name, []).append(value)
    return flags, rest[i:].strip()


def flag(flags: dict[str, list[str]], name: str) -> str:
    return flags.get(name, [""])[-1]


def bool_flag(ctx: Ctx, flags: dict[str, list[str]], name: str) -> bool:
    v = flag(flags, name).lower()
    if v in ("", "false"):
        return False
    if v == "true":
        return True
    raise ctx.error(f"expecting boolean value for flag {name}, not: {v}")


def maybe_json(text: str) -> list[str] | None:
    """The exec form, read as BuildKit 20.10 does (Go's json.Decoder.Decode): the first JSON value
    is taken and any text after it is ignored; anything else is shell form."""
    if not text.startswith("["):
        return None
    try:
        v, _ = json.JSONDecoder().raw_decode(text)
    except ValueError:
        return None
    if isinstance(v, list) and all(isinstance(x, str) for x in v):
        return v
    return None


def command(text: str) -> CommandLine:
    js = maybe_json(text)
    if js is not None:
        return CommandLine(args=tuple(js), json=True)
    return CommandLine(args=(text,), json=False)     # bare CMD/RUN: `/bin/sh -c ""`, as BuildKit


def pairs(ctx: Ctx, rest: str, *, legacy: bool) -> tuple[tuple[str, str], ...]:
    words = ctx.words(rest)
    if not words:
        raise ctx.error(f"{ctx.raw.keyword} requires at least one argument")
    if "=" not in words[0]:
        if not legacy:
            raise ctx.error(f"Syntax error - can't find = in {words[0]!r}. Must be of the form: name=value")
        parts = rest.split(None, 1)
        if len(parts) < 2:
            raise ctx.error(f"{ctx.raw.keyword} must have two arguments")
        return ((parts[0], parts[1].strip()),)
    out = []
    for w in words:
        k, eq, v = w.partition("=")
        if not eq or not k:
            raise ctx.error(f"Syntax error - can't find = in {w!r}. Must be of the form: name=value")
        out.append((k, v))
    return tuple(out)


_DURATION_UNITS = {"ns": 1, "us": 1000, "µs": 1000, "ms": 10**6, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


def parse_duration(text: str) -> int:
    """A Go duration ("30s", "1m30s", "1.5h", "0") in nanoseconds; ValueError if malformed."""
    if text in ("0", ""):
        return 0
    pos, total = 0, 0.0
    while pos < len(text):
        m = _DURATION_PART.match(text, pos)
        if not m:
            raise ValueError(f"time: invalid duration {text!r}")
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    return int(round(total))
