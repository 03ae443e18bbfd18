"""RawInstruction -> typed instruction (frontend.instructions): one function per instruction.

`parse_instruction(raw, filename=...)` returns one of the typed classes or raises
DockerfileError (unknown instruction, unknown flag, bad arguments) with its line.
"""
from __future__ import annotations

import re

from .instruction_words import Ctx, bool_flag, command, flag, maybe_json, pairs, parse_duration, split_flags
from .forms import whitespace_words
from .instructions import (Arg, Cmd, Copy, Entrypoint, Env, Expose, From, Healthcheck, Instruction, Label,
                           Maintainer, Onbuild, Run, Shell, Stopsignal, User, Volume, Workdir)
from .parse import Heredoc, RawInstruction, heredocs_in, join_heredoc_words

__all__ = ["parse_instruction"]


# ------------------------------------------------------------------ per instruction

def _from(ctx: Ctx, flags: dict[str, list[str]], rest: str) -> From:
    words = whitespace_words(rest)      # no quoting at this level, as BuildKit's parser
    if len(words) == 3 and words[1].lower() == "as":
        name = words[2].lower()
        if not re.fullmatch(r"[a-z][a-z0-9-_.]*", name):
            raise ctx.error(f"invalid name for build stage: {words[2]!r}, name can't start with a number or contain symbols")
    elif len(words) == 1:
        name = ""
    else:
        raise ctx.error("FROM requires either one or three arguments")
    return From(**ctx.base(), image=words[0], name=name, platform=flag(flags, "platform"))


def _arg(ctx: Ctx, flags: dict[str, list[str]], rest: str) -> Arg:
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


def _run(ctx: Ctx, flags: dict[str, list[str]], rest: str) -> Run:
    cmd = command(ctx, rest)          # a bare RUN runs `/bin/sh -c ""` (BuildKit 20.10 builds it)
    if ctx.raw.heredocs and cmd.json:
        raise ctx.error("heredocs are not supported in the exec form of RUN")
    net = flag(flags, "network")
    if net and net not in ("default", "none", "host"):
        raise ctx.error(f"unsupported network mode {net!r} (want default, none or host)")
    return Run(**ctx.base(), command=cmd, mounts=tuple(flags.get("mount", ())), network=net,
               security=flag(flags, "security"), heredocs=ctx.raw.heredocs)


def _copy(ctx: Ctx, flags: dict[str, list[str]], rest: str) -> Copy:
    is_add = ctx.raw.keyword == "ADD"
    js = maybe_json(ctx, rest)
    docs = list(ctx.raw.heredocs)
    # the shell form is split on blanks before any quote is read (BuildKit's parseMaybeJSONToList):
    # `COPY "a b" /d/` is the words `"a` and `b"`, each expanded later as one word (an error here)
    words = js if js is not None else whitespace_words(rest)
    if docs:
        words = join_heredoc_words(words)
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
                from_=flag(flags, "from"), chown=flag(flags, "chown"), chmod=flag(flags, "chmod"),
                exclude=tuple(flags.get("exclude", ())), parents=bool_flag(ctx, flags, "parents"),
                link=bool_flag(ctx, flags, "link"), checksum=flag(flags, "checksum"),
                keep_git_dir=bool_flag(ctx, flags, "keep-git-dir"))


def _healthcheck(ctx: Ctx, flags: dict[str, list[str]], rest: str) -> Healthcheck:
    parts = rest.split(None, 1)
    kw = parts[0].upper() if parts else ""
    cmd_text = parts[1] if len(parts) > 1 else ""
    if kw == "NONE":
        if cmd_text.strip() or flags:
            raise ctx.error("HEALTHCHECK NONE takes no arguments")
        return Healthcheck(**ctx.base(), test=("NONE",))
    if kw != "CMD":
        raise ctx.error(f"Unknown type {kw!r} in HEALTHCHECK (try CMD)")
    if not cmd_text.strip():
        raise ctx.error("Missing command after HEALTHCHECK CMD")
    cmd = command(ctx, cmd_text.strip())
    test = ("CMD", *cmd.args) if cmd.json else ("CMD-SHELL", cmd.args[0])
    vals: dict[str, int] = {}
    for name in ("interval", "timeout", "start-period", "start-interval"):
        text = flag(flags, name)
        try:
            ns = parse_duration(text)
        except ValueError as e:
            raise ctx.error(str(e)) from e
        if ns and ns < 10**6:
            raise ctx.error(f"Interval {name!r} cannot be less than 1ms")
        vals[name.replace("-", "_")] = ns
    retries = 0
    if flag(flags, "retries"):
        try:
            retries = int(flag(flags, "retries"))
        except ValueError as e:
            raise ctx.error(f"invalid --retries value {flag(flags, 'retries')!r}") from e
        if retries < 0:
            raise ctx.error("--retries cannot be negative")
    return Healthcheck(**ctx.base(), test=test, retries=retries, interval=vals["interval"],
                       timeout=vals["timeout"], start_period=vals["start_period"],
                       start_interval=vals["start_interval"])


def _one_arg(ctx: Ctx, rest: str) -> str:
    if not rest:
        raise ctx.error(f"{ctx.raw.keyword} requires exactly one argument")
    return rest


def _onbuild(ctx: Ctx, rest: str) -> Onbuild:
    kw = rest.split(None, 1)[0].upper() if rest else ""
    if not kw:
        raise ctx.error("ONBUILD requires at least one argument")
    if kw in ("ONBUILD", "FROM", "MAINTAINER"):
        raise ctx.error(f"{kw} isn't allowed as an ONBUILD trigger")
    # An unknown trigger is stored as written; it fails only when a child stage fires it. A
    # trigger with heredocs keeps their bodies and delimiters, so it parses again as it was.
    bodies = "".join(f"\n{d.content}{d.name}" for d in ctx.raw.heredocs)
    return Onbuild(**ctx.base(), expression=rest + bodies)


def _shell(ctx: Ctx, rest: str) -> Shell:
    js = maybe_json(ctx, rest)
    if not js:
        raise ctx.error("SHELL requires the arguments to be in JSON form")
    return Shell(**ctx.base(), args=tuple(js))


def _volume(ctx: Ctx, rest: str) -> Volume:
    js = maybe_json(ctx, rest)
    # the shell form is split on blanks before any quote is read, as BuildKit's
    # parseMaybeJSONToList does: `VOLUME "/a b"` is the two words `"/a` and `b"` (an error later)
    paths = tuple(js) if js is not None else tuple(whitespace_words(rest))
    if not paths:
        raise ctx.error("VOLUME requires at least one argument")
    return Volume(**ctx.base(), paths=paths, json=js is not None)


_PARSERS = {
    "FROM": _from, "ARG": _arg, "RUN": _run, "COPY": _copy, "ADD": _copy, "HEALTHCHECK": _healthcheck,
    "ENV": lambda c, f, r: Env(**c.base(), pairs=pairs(c, r)),
    "LABEL": lambda c, f, r: Label(**c.base(), pairs=pairs(c, r)),
    "CMD": lambda c, f, r: Cmd(**c.base(), command=command(c, r)),
    "ENTRYPOINT": lambda c, f, r: Entrypoint(**c.base(), command=command(c, r)),
    "SHELL": lambda c, f, r: _shell(c, r),
    "WORKDIR": lambda c, f, r: Workdir(**c.base(), path=_one_arg(c, r)),
    "USER": lambda c, f, r: User(**c.base(), user=_one_arg(c, r)),
    "EXPOSE": lambda c, f, r: Expose(**c.base(), ports=tuple(whitespace_words(_one_arg(c, r)))),
    "VOLUME": lambda c, f, r: _volume(c, r),
    "STOPSIGNAL": lambda c, f, r: Stopsignal(**c.base(), signal=_one_arg(c, r)),
    "ONBUILD": lambda c, f, r: _onbuild(c, r),
    "MAINTAINER": lambda c, f, r: Maintainer(**c.base(), name=_one_arg(c, r)),
}


def parse_instruction(raw: RawInstruction, *, filename: str = "Dockerfile", escape: str = "\\") -> Instruction:
    """Typed instruction for `raw`; DockerfileError with the line for anything invalid."""
    ctx = Ctx(raw, filename, escape)
    parser = _PARSERS.get(raw.keyword)
    if parser is None:
        raise ctx.error(f"unknown instruction: {raw.keyword}")
    flags, rest = split_flags(ctx, raw.rest)
    if raw.heredocs and raw.keyword not in ("RUN", "COPY", "ADD", "ONBUILD"):
        raise ctx.error(f"{raw.keyword} does not support heredocs")
    return parser(ctx, flags, rest)  # type: ignore[return-value]  # each parser returns its own type
