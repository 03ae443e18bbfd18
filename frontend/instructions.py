"""Typed instructions: one frozen dataclass per Dockerfile instruction, flags parsed and checked.

`parse_instruction(raw, filename=...)` turns a `RawInstruction` into one of the classes below or
raises DockerfileError (unknown instruction, unknown flag, bad arguments) with its line. Words
are kept *unexpanded* (quotes and `$` intact): variable expansion needs the stage's environment
at that point, so convert does it.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Union

from builder.errors import DockerfileError

from .parse import Heredoc, RawInstruction, heredocs_in
from .shell import split_raw_words, unquote

__all__ = ["Instruction", "parse_instruction", "parse_duration", "CommandLine", "From", "Arg", "Env", "Label",
           "Run", "Cmd", "Entrypoint", "Shell", "Copy", "Workdir", "User", "Expose", "Volume",
           "Stopsignal", "Healthcheck", "Onbuild", "Maintainer"]


@dataclass(frozen=True, slots=True, kw_only=True)
class _Ins:
    line: int
    end_line: int
    original: str          # "KEYWORD rest" as written (continuations joined)


@dataclass(frozen=True, slots=True, kw_only=True)
class CommandLine:
    """A command in exec form (`json=True`, args as given) or shell form (one arg: the text)."""
    args: tuple[str, ...]
    json: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class From(_Ins):
    image: str
    name: str = ""                 # lower-cased stage name, "" if none
    platform: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Arg(_Ins):
    pairs: tuple[tuple[str, str | None], ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Env(_Ins):
    pairs: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Label(_Ins):
    pairs: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Run(_Ins):
    command: CommandLine
    mounts: tuple[str, ...] = ()    # raw --mount values
    network: str = ""
    security: str = ""
    heredocs: tuple[Heredoc, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Cmd(_Ins):
    command: CommandLine


@dataclass(frozen=True, slots=True, kw_only=True)
class Entrypoint(_Ins):
    command: CommandLine


@dataclass(frozen=True, slots=True, kw_only=True)
class Shell(_Ins):
    args: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Copy(_Ins):
    """COPY or ADD (`is_add`). `sources` are raw words; `inline` are heredoc sources (in order,
    with their position among the sources irrelevant, as in BuildKit)."""
    is_add: bool
    sources: tuple[str, ...]
    dest: str
    inline: tuple[Heredoc, ...] = ()
    from_: str = ""
    chown: str = ""
    chmod: str = ""
    exclude: tuple[str, ...] = ()
    parents: bool = False
    link: bool = False
    checksum: str = ""
    keep_git_dir: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Workdir(_Ins):
    path: str


@dataclass(frozen=True, slots=True, kw_only=True)
class User(_Ins):
    user: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Expose(_Ins):
    ports: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Volume(_Ins):
    paths: tuple[str, ...]
    json: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Stopsignal(_Ins):
    signal: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Healthcheck(_Ins):
    """`test` is ("NONE",), ("CMD", args...) or ("CMD-SHELL", text); durations in ns."""
    test: tuple[str, ...]
    interval: int = 0
    timeout: int = 0
    start_period: int = 0
    start_interval: int = 0
    retries: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Onbuild(_Ins):
    expression: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Maintainer(_Ins):
    name: str


Instruction = Union[From, Arg, Env, Label, Run, Cmd, Entrypoint, Shell, Copy, Workdir, User, Expose, Volume,
                    Stopsignal, Healthcheck, Onbuild, Maintainer]

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


class _Ctx:
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


def _split_flags(ctx: _Ctx, rest: str) -> tuple[dict[str, list[str]], str]:
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


def _flag(flags: dict[str, list[str]], name: str) -> str:
    return flags.get(name, [""])[-1]


def _bool_flag(ctx: _Ctx, flags: dict[str, list[str]], name: str) -> bool:
    v = _flag(flags, name).lower()
    if v in ("", "false"):
        return False
    if v == "true":
        return True
    raise ctx.error(f"expecting boolean value for flag {name}, not: {v}")


def _maybe_json(text: str) -> list[str] | None:
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


def _command(text: str) -> CommandLine:
    js = _maybe_json(text)
    if js is not None:
        return CommandLine(args=tuple(js), json=True)
    return CommandLine(args=(text,), json=False)     # bare CMD/RUN: `/bin/sh -c ""`, as BuildKit


def _pairs(ctx: _Ctx, rest: str, *, legacy: bool) -> tuple[tuple[str, str], ...]:
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


# ------------------------------------------------------------------ per instruction

def _from(ctx: _Ctx, flags: dict[str, list[str]], rest: str) -> From:
    words = ctx.words(rest)
    if len(words) == 3 and words[1].lower() == "as":
        name = words[2].lower()
        if not re.fullmatch(r"[a-z][a-z0-9-_.]*", name):
            raise ctx.error(f"invalid name for build stage: {words[2]!r}, name can't start with a number or contain symbols")
    elif len(words) == 1:
        name = ""
    else:
        raise ctx.error("FROM requires either one or three arguments")
    return From(**ctx.base(), image=words[0], name=name, platform=_flag(flags, "platform"))


def _arg(ctx: _Ctx, flags: dict[str, list[str]], rest: str) -> Arg:
    words = ctx.words(rest)
    if not words:
        raise ctx.error("ARG requires at least one argument")
    pairs: list[tuple[str, str | None]] = []
    for w in words:
        k, eq, v = w.partition("=")
        if not k:
            raise ctx.error(f"invalid ARG {w!r}")
        pairs.append((k, v if eq else None))
    return Arg(**ctx.base(), pairs=tuple(pairs))


def _run(ctx: _Ctx, flags: dict[str, list[str]], rest: str) -> Run:
    cmd = _command(rest)          # a bare RUN runs `/bin/sh -c ""` (BuildKit 20.10 builds it)
    if ctx.raw.heredocs and cmd.json:
        raise ctx.error("heredocs are not supported in the exec form of RUN")
    net = _flag(flags, "network")
    if net and net not in ("default", "none", "host"):
        raise ctx.error(f"unsupported network mode {net!r} (want default, none or host)")
    return Run(**ctx.base(), command=cmd, mounts=tuple(flags.get("mount", ())), network=net,
               security=_flag(flags, "security"), heredocs=ctx.raw.heredocs)


def _copy(ctx: _Ctx, flags: dict[str, list[str]], rest: str) -> Copy:
    is_add = ctx.raw.keyword == "ADD"
    js = _maybe_json(rest)
    words = js if js is not None else ctx.words(rest)
    docs = list(ctx.raw.heredocs)
    names = {d.name for d in docs}
    sources: list[str] = []
    inline: list[Heredoc] = []
    if len(words) < 2:
        raise ctx.error(f"{ctx.raw.keyword} requires at least two arguments, but only one was provided. Destination could not be determined")
    for w in words[:-1]:
        spec = heredocs_in(w) if docs else []
        if spec and spec[0][0] in names:
            inline.append(docs.pop(0))
        else:
            sources.append(w)
    if docs and heredocs_in(words[-1]):
        raise ctx.error(f"{ctx.raw.keyword} cannot use a heredoc as its destination")
    if "from" in flags and is_add:
        raise ctx.error("Unknown flag: from")
    return Copy(**ctx.base(), is_add=is_add, sources=tuple(sources), dest=words[-1], inline=tuple(inline),
                from_=_flag(flags, "from"), chown=_flag(flags, "chown"), chmod=_flag(flags, "chmod"),
                exclude=tuple(flags.get("exclude", ())), parents=_bool_flag(ctx, flags, "parents"),
                link=_bool_flag(ctx, flags, "link"), checksum=_flag(flags, "checksum"),
                keep_git_dir=_bool_flag(ctx, flags, "keep-git-dir"))


def _healthcheck(ctx: _Ctx, flags: dict[str, list[str]], rest: str) -> Healthcheck:
    kw, _, cmd_text = rest.partition(" ")
    kw = kw.upper()
    if kw == "NONE":
        if cmd_text.strip() or flags:
            raise ctx.error("HEALTHCHECK NONE takes no arguments")
        return Healthcheck(**ctx.base(), test=("NONE",))
    if kw != "CMD":
        raise ctx.error(f"Unknown type {kw!r} in HEALTHCHECK (try CMD)")
    if not cmd_text.strip():
        raise ctx.error("Missing command after HEALTHCHECK CMD")
    cmd = _command(cmd_text.strip())
    test = ("CMD", *cmd.args) if cmd.json else ("CMD-SHELL", cmd.args[0])
    vals: dict[str, int] = {}
    for name in ("interval", "timeout", "start-period", "start-interval"):
        text = _flag(flags, name)
        try:
            ns = parse_duration(text)
        except ValueError as e:
            raise ctx.error(str(e)) from e
        if ns and ns < 10**6:
            raise ctx.error(f"Interval {name!r} cannot be less than 1ms")
        vals[name.replace("-", "_")] = ns
    retries = 0
    if _flag(flags, "retries"):
        try:
            retries = int(_flag(flags, "retries"))
        except ValueError as e:
            raise ctx.error(f"invalid --retries value {_flag(flags, 'retries')!r}") from e
        if retries < 0:
            raise ctx.error("--retries cannot be negative")
    return Healthcheck(**ctx.base(), test=test, retries=retries, interval=vals["interval"],
                       timeout=vals["timeout"], start_period=vals["start_period"],
                       start_interval=vals["start_interval"])


def _one_arg(ctx: _Ctx, rest: str) -> str:
    if not rest:
        raise ctx.error(f"{ctx.raw.keyword} requires exactly one argument")
    return rest


def _onbuild(ctx: _Ctx, rest: str) -> Onbuild:
    kw = rest.split(None, 1)[0].upper() if rest else ""
    if not kw:
        raise ctx.error("ONBUILD requires at least one argument")
    if kw in ("ONBUILD", "FROM", "MAINTAINER"):
        raise ctx.error(f"{kw} isn't allowed as an ONBUILD trigger")
    # An unknown trigger is stored as written; it fails only when a child stage fires it.
    return Onbuild(**ctx.base(), expression=rest)


def _shell(ctx: _Ctx, rest: str) -> Shell:
    js = _maybe_json(rest)
    if not js:
        raise ctx.error("SHELL requires the arguments to be in JSON form")
    return Shell(**ctx.base(), args=tuple(js))


def _volume(ctx: _Ctx, rest: str) -> Volume:
    js = _maybe_json(rest)
    paths = tuple(js) if js is not None else tuple(ctx.words(rest))
    if not paths:
        raise ctx.error("VOLUME requires at least one argument")
    return Volume(**ctx.base(), paths=paths, json=js is not None)


_PARSERS = {
    "FROM": _from, "ARG": _arg, "RUN": _run, "COPY": _copy, "ADD": _copy, "HEALTHCHECK": _healthcheck,
    "ENV": lambda c, f, r: Env(**c.base(), pairs=_pairs(c, r, legacy=True)),
    "LABEL": lambda c, f, r: Label(**c.base(), pairs=_pairs(c, r, legacy=True)),
    "CMD": lambda c, f, r: Cmd(**c.base(), command=_command(r)),
    "ENTRYPOINT": lambda c, f, r: Entrypoint(**c.base(), command=_command(r)),
    "SHELL": lambda c, f, r: _shell(c, r),
    "WORKDIR": lambda c, f, r: Workdir(**c.base(), path=_one_arg(c, r)),
    "USER": lambda c, f, r: User(**c.base(), user=_one_arg(c, r)),
    "EXPOSE": lambda c, f, r: Expose(**c.base(), ports=tuple(c.words(_one_arg(c, r)))),
    "VOLUME": lambda c, f, r: _volume(c, r),
    "STOPSIGNAL": lambda c, f, r: Stopsignal(**c.base(), signal=_one_arg(c, r)),
    "ONBUILD": lambda c, f, r: _onbuild(c, r),
    "MAINTAINER": lambda c, f, r: Maintainer(**c.base(), name=_one_arg(c, r)),
}


def parse_instruction(raw: RawInstruction, *, filename: str = "Dockerfile", escape: str = "\\") -> Instruction:
    """Typed instruction for `raw`; DockerfileError with the line for anything invalid."""
    ctx = _Ctx(raw, filename, escape)
    parser = _PARSERS.get(raw.keyword)
    if parser is None:
        raise ctx.error(f"unknown instruction: {raw.keyword}")
    flags, rest = _split_flags(ctx, raw.rest)
    if raw.heredocs and raw.keyword not in ("RUN", "COPY", "ADD"):
        raise ctx.error(f"{raw.keyword} does not support heredocs")
    return parser(ctx, flags, rest)  # type: ignore[return-value]  # each parser returns its own type
