"""The pieces instruction parsing shares: flags (`--name=value`), the exec form (JSON array) vs
shell form, `key=value` pairs, Go durations, and the error context of one raw instruction.
"""
from __future__ import annotations

import re

from builder.errors import DockerfileError

from .forms import NotStringArray, extract_flags, json_array
from .instructions import CommandLine
from .parse import RawInstruction
from .shell import split_raw_words

__all__ = ["Ctx", "split_flags", "flag", "bool_flag", "maybe_json", "command", "name_values", "pairs", "parse_duration"]


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


def split_flags(ctx: Ctx, rest: str) -> tuple[dict[str, list[str]], str]:
    """The instruction's flags by name (checked against what it accepts) and the rest."""
    allowed = _FLAGS.get(ctx.raw.keyword, {})
    words, rest = extract_flags(rest)
    flags: dict[str, list[str]] = {}
    for word in words:
        name, eq, value = word[2:].partition("=")
        if name not in allowed:
            raise ctx.error(f"Unknown flag: {name}")
        if not eq:
            if name not in _BOOL_FLAGS:
                raise ctx.error(f"Missing a value on flag: {name}")
            value = "true"
        if name in flags and not allowed[name]:
            raise ctx.error(f"Duplicate flag specified: {name}")
        flags.setdefault(name, []).append(value)
    return flags, rest


def flag(flags: dict[str, list[str]], name: str) -> str:
    return flags.get(name, [""])[-1]


def bool_flag(ctx: Ctx, flags: dict[str, list[str]], name: str) -> bool:
    v = flag(flags, name).lower()
    if v in ("", "false"):
        return False
    if v == "true":
        return True
    raise ctx.error(f"expecting boolean value for flag {name}, not: {v}")


def maybe_json(ctx: Ctx, text: str) -> list[str] | None:
    """The exec form, as BuildKit reads it: a JSON array of strings and nothing after it; any
    other text is shell form, except a JSON array of other values, which is an error."""
    try:
        return json_array(text)
    except NotStringArray as e:
        raise ctx.error(f"{ctx.raw.keyword}: {e}") from e


def command(ctx: Ctx, text: str) -> CommandLine:
    js = maybe_json(ctx, text)
    if js is not None:
        return CommandLine(args=tuple(js), json=True)
    return CommandLine(args=(text,), json=False)     # bare CMD/RUN: `/bin/sh -c ""`, as BuildKit


def name_values(ctx: Ctx, rest: str) -> tuple[tuple[str, str, str], ...]:
    """ENV/LABEL arguments as BuildKit's parser reads them: (key, value, separator) with raw
    (unexpanded) words; the separator is "=" for `k=v ...` and "" for the legacy `KEY value`."""
    words = ctx.words(rest)
    if not words:
        raise ctx.error(f"{ctx.raw.keyword} requires at least one argument")
    if "=" not in words[0]:
        parts = rest.split(None, 1)
        if len(parts) < 2:
            raise ctx.error(f"{ctx.raw.keyword} must have two arguments")
        return ((parts[0], parts[1].strip(), ""),)
    out = []
    for w in words:
        k, eq, v = w.partition("=")
        if not eq:
            raise ctx.error(f"Syntax error - can't find = in {w!r}. Must be of the form: name=value")
        out.append((k, v, "="))
    return tuple(out)


def pairs(ctx: Ctx, rest: str) -> tuple[tuple[str, str], ...]:
    """ENV/LABEL (key, raw value) pairs; an empty key is an error."""
    out = []
    for k, v, _ in name_values(ctx, rest):
        if not k:
            raise ctx.error(f"{ctx.raw.keyword} names can not be blank")
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
