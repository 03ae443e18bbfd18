"""Typed instructions: one frozen dataclass per Dockerfile instruction, flags parsed and checked.

`frontend.instruction_parse.parse_instruction(raw, filename=...)` turns a `RawInstruction` into
one of these classes. Words are kept *unexpanded* (quotes and `$` intact): variable expansion
needs the stage's environment at that point, so convert does it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union

from .parse import Heredoc

__all__ = ["Instruction", "CommandLine", "From", "Arg", "Env", "Label", "Run", "Cmd", "Entrypoint", "Shell",
           "Copy", "Workdir", "User", "Expose", "Volume", "Stopsignal", "Healthcheck", "Onbuild", "Maintainer"]


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
