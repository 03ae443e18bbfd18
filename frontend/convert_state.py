"""The per-stage state that convert's dispatch functions update (private to frontend/convert*).

A `StageState` is BuildKit's dispatchState: the current root filesystem vertex, the image
config being built, the ARGs in scope, the history so far, and the progress-name counters.
It is mutable on purpose and never leaves the frontend: convert returns frozen values.
"""
from __future__ import annotations

import posixpath
from dataclasses import dataclass, field, replace
from typing import Mapping

from builder.errors import DockerfileError
from builder.solve.graph import HistoryStep, SourceLocation, Vertex
from builder.image.oci import ContainerConfig, Platform
from builder.solve.ops import Op

from .instructions import Instruction
from .shell import ExpansionError, expand_word, expand_words
from .text import valid_utf8

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_SHELL = ("/bin/sh", "-c")
_PROXY_NAMES = ("HTTP_PROXY", "HTTPS_PROXY", "FTP_PROXY", "NO_PROXY", "ALL_PROXY")   # BuildKit ProxyEnv


@dataclass(frozen=True, slots=True, kw_only=True)
class StageResult:
    """A converted stage, as later stages see it (FROM <stage>, COPY --from)."""
    vertex: Vertex
    config: ContainerConfig
    platform: Platform
    history: tuple[HistoryStep, ...]
    base_history: tuple
    author: str = ""
    # the stage's ARGs (declaration order) and ARG-over-ENV overrides: a stage built FROM this one
    # starts with them, as BuildKit's dispatch state copies its base's build args
    args: tuple[tuple[str, str | None], ...] = ()
    arg_overrides: tuple[tuple[str, str], ...] = ()


@dataclass(kw_only=True)
class StageState:
    filename: str
    label: str                      # progress prefix: "builder", "stage-1" or "" (final unnamed)
    total: int                      # instructions in the stage + 1 (FROM)
    vertex: Vertex
    config: ContainerConfig
    platform: Platform
    build_args: Mapping[str, str]
    meta_args: Mapping[str, str | None]
    escape: str = "\\"
    args: dict[str, str | None] = field(default_factory=dict)     # stage ARGs, declaration order
    arg_overrides: dict[str, str] = field(default_factory=dict)   # ARGs declared after a same-named ENV
    history: list[HistoryStep] = field(default_factory=list)
    base_history: tuple = ()
    author: str = ""
    cmd_set: bool = False
    step: int = 1

    # ---------------------------------------------------------------- errors, names
    def error(self, ins: Instruction, msg: str) -> DockerfileError:
        return DockerfileError(msg, filename=self.filename, line=ins.line)

    def location(self, ins: Instruction) -> SourceLocation:
        return SourceLocation(filename=self.filename, start_line=ins.line, end_line=ins.end_line)

    def next_name(self, text: str) -> str:
        prefix = f"{self.label} " if self.label else ""
        return valid_utf8(f"[{prefix}{self.step}/{self.total}] {text}")

    def vertex_for(self, ins: Instruction, op: Op, inputs: tuple[Vertex, ...], created_by: str) -> Vertex:
        return Vertex(op=op, inputs=inputs, name=self.next_name(ins.original),
                      source_location=self.location(ins), created_by=created_by)

    def record(self, created_by: str, vertex: Vertex | None = None) -> None:
        self.history.append(HistoryStep(created_by=created_by, vertex=vertex))

    # ---------------------------------------------------------------- environment
    @property
    def workdir(self) -> str:
        return self.config.working_dir or "/"

    @property
    def shell(self) -> tuple[str, ...]:
        return self.config.shell or DEFAULT_SHELL

    def expansion_env(self) -> dict[str, str]:
        """ARGs in scope, overridden by ENV (an ENV wins over an earlier ARG of the same name; an
        ARG with a value declared after the ENV wins over it)."""
        env = {k: v for k, v in self.args.items() if v is not None}
        env.update(self.config.env_dict())
        env.update(self.arg_overrides)
        return env

    def expand(self, ins: Instruction, word: str, *, skip_quotes: bool = False) -> str:
        try:
            return expand_word(word, self.expansion_env(), escape=self.escape, skip_quotes=skip_quotes)
        except ExpansionError as e:
            raise self.error(ins, str(e)) from e

    def expand_split(self, ins: Instruction, text: str) -> list[str]:
        try:
            return expand_words(text, self.expansion_env(), escape=self.escape)
        except ExpansionError as e:
            raise self.error(ins, str(e)) from e

    def run_env(self) -> tuple[str, ...]:
        """Env of a RUN (ExecOp.env, part of its cache key): image Env, then ARGs not shadowed by
        it, then the default PATH. Proxy build args are not here: see proxy_env()."""
        env = [f"{k}={self.arg_overrides[k]}" if k in self.arg_overrides else e
               for e in self.config.env for k in (e.partition("=")[0],)]
        names = set(self.config.env_dict())
        for k, v in self.args.items():
            if v is not None and k not in names:
                env.append(f"{k}={v}")
                names.add(k)
        if "PATH" not in names:
            env.append(f"PATH={DEFAULT_PATH}")
        return tuple(env)

    def proxy_env(self) -> tuple[str, ...]:
        """ExecOp.proxy_env of a RUN, as BuildKit's ProxyEnv: each proxy build arg (either case of
        its name; the upper-case one if both are given) sets both `HTTP_PROXY` and `http_proxy`,
        and so on for HTTPS, FTP, NO and ALL, in that order; empty values set nothing. BuildKit
        lets these win over the step's own env of the same name (an `ENV no_proxy=...`)."""
        out: list[str] = []
        for upper in _PROXY_NAMES:
            lower = upper.lower()
            value = self.build_args.get(upper) or self.build_args.get(lower) or ""
            if value:
                out += [f"{upper}={value}", f"{lower}={value}"]
        return tuple(out)

    def run_args_prefix(self) -> str:
        """BuildKit's `|N K=V ...` history prefix for the stage's ARGs."""
        env = self.config.env_dict()
        items = [f"{k}={env.get(k, v if v is not None else '')}" for k, v in self.args.items()]
        return f"|{len(items)} " + " ".join(items) + " " if items else ""

    def resolve_path(self, path: str) -> str:
        """Absolute, cleaned path; relative paths are taken from WORKDIR."""
        joined = posixpath.join(self.workdir, path)
        out = posixpath.normpath(joined)
        return "/" + out.lstrip("/")

    def set_config(self, **changes: object) -> None:
        self.config = replace(self.config, **changes)  # type: ignore[arg-type]


def result_of(st: StageState) -> StageResult:
    return StageResult(vertex=st.vertex, config=st.config, platform=st.platform, history=tuple(st.history),
                       base_history=st.base_history, author=st.author, args=tuple(st.args.items()),
                       arg_overrides=tuple(st.arg_overrides.items()))
