"""Dockerfile -> BuildGraph: the frontend's public entry point.

`convert(dockerfile, opts)` parses the whole file (so any syntax error, unknown instruction or
flag fails before anything runs), finds the stages the target needs, converts those in
dependency order (one dispatch function per instruction: convert_meta, convert_run,
convert_copy) and returns a BuildGraph whose Target carries the final vertex, the image config
and the history. It is pure: the only collaborator is the injected ImageResolver.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Literal, Mapping

from builder.errors import BuildCancelled, DockerfileError, PybuildError
from builder.solve.graph import BuildGraph, Target, Vertex
from builder.image.view import ImageResolver, ResolvedImage
from builder.image.oci import ContainerConfig, ImageConfig, Platform
from builder.solve.ops import ImageSource, LocalSource, OCILayoutSource, ScratchSource

from . import instructions as I
from .convert_copy import dispatch_copy
from .convert_meta import dispatch_meta
from .convert_run import dispatch_run
from .convert_state import DEFAULT_PATH, StageResult, StageState, result_of
from .instruction_parse import parse_instruction
from .parse import parse_dockerfile, parse_line
from .shell import ExpansionError, expand_word
from .stages import Stage, Stages, build_order, split_stages
from .text import decode_dockerfile, valid_strings, valid_utf8

__all__ = ["NamedContext", "FrontendOptions", "convert"]


@dataclass(frozen=True, kw_only=True)
class NamedContext:
    kind: Literal["local", "oci-layout", "image"]
    value: str            # dir path for local/oci-layout; image ref for "image" (docker-image://REF)
    tag: str = ""         # oci-layout tag ("" = the only/first manifest)


@dataclass(frozen=True, kw_only=True)
class FrontendOptions:
    filename: str = "Dockerfile"
    build_args: Mapping[str, str] = field(default_factory=dict)
    target: str | None = None
    platform: Platform = field(default_factory=Platform.host)
    build_platform: Platform = field(default_factory=Platform.host)
    named_contexts: Mapping[str, NamedContext] = field(default_factory=dict)
    context_excludes: tuple[str, ...] = ()
    resolver: ImageResolver


def predefined_args(opts: FrontendOptions) -> dict[str, str]:
    t, b = opts.platform, opts.build_platform
    return {"TARGETPLATFORM": str(t), "TARGETOS": t.os, "TARGETARCH": t.architecture, "TARGETVARIANT": t.variant,
            "BUILDPLATFORM": str(b), "BUILDOS": b.os, "BUILDARCH": b.architecture, "BUILDVARIANT": b.variant}


_KNOWN_OS = frozenset({"linux", "windows", "darwin", "freebsd", "netbsd", "openbsd", "solaris", "illumos",
                       "aix", "android", "dragonfly", "ios", "plan9", "js", "wasip1"})
_KNOWN_ARCH = frozenset({"amd64", "386", "arm", "arm64", "ppc64le", "ppc64", "s390x", "riscv64", "mips64le",
                         "mips64", "mipsle", "mips", "loong64", "wasm"})


@dataclass(frozen=True, slots=True, kw_only=True)
class _Base:
    vertex: Vertex
    config: ContainerConfig
    platform: Platform
    history: tuple = ()
    base_history: tuple = ()
    author: str = ""
    fresh: bool = True            # a source vertex made for this FROM (named after it)
    args: tuple[tuple[str, str | None], ...] = ()       # a parent stage's ARGs, inherited
    arg_overrides: tuple[tuple[str, str], ...] = ()


# The config BuildKit gives a stage without an image (FROM scratch, a local named context): the
# default PATH and the working directory "/", both kept in the image it writes.
_SCRATCH_CONFIG = ContainerConfig(env=(f"PATH={DEFAULT_PATH}",), working_dir="/")


class _Converter:
    def __init__(self, opts: FrontendOptions, stages: Stages, escape: str) -> None:
        self.opts = opts
        self.stages = stages
        self.escape = escape
        self.results: dict[int, StageResult] = {}
        self._context: Vertex | None = None
        self._images: dict[tuple[str, str], Vertex] = {}
        self._active: set[int] = set()
        self._current: list[int] = []      # stages being converted, innermost last
        self.meta = self._meta_args()

    # ------------------------------------------------------------ global ARGs
    def _meta_args(self) -> dict[str, str | None]:
        """The global ARGs. A value-less global ARG of an automatic platform arg
        (`ARG TARGETPLATFORM`) keeps the automatic value (dockerfile 1.19; 20.10 emptied it)."""
        predefined = predefined_args(self.opts)
        meta: dict[str, str | None] = dict(predefined)
        for arg in self.stages.meta_args:
            for key, default in arg.pairs:
                if key in self.opts.build_args:
                    meta[key] = self.opts.build_args[key]
                elif default is not None:
                    meta[key] = self._expand_with(meta, arg, default)
                elif key not in predefined:
                    meta[key] = None
        return meta

    def _expand_with(self, meta: Mapping[str, str | None], ins: I.Instruction, word: str) -> str:
        env = {k: v for k, v in meta.items() if v is not None}
        try:
            return expand_word(word, env, escape=self.escape)
        except ExpansionError as e:
            raise DockerfileError(str(e), filename=self.opts.filename, line=ins.line) from e

    def _expand_meta(self, ins: I.Instruction, word: str) -> str:
        return self._expand_with(self.meta, ins, word)

    def expand_ref(self, word: str) -> str:
        env = {k: v for k, v in self.meta.items() if v is not None}
        try:
            return expand_word(word, env, escape=self.escape)
        except ExpansionError:
            return word

    # ------------------------------------------------------------ sources
    def context(self) -> Vertex:
        if self._context is None:
            self._context = Vertex(op=LocalSource(name="context", excludes=self.opts.context_excludes),
                                   name="[internal] load build context")
        return self._context

    def _image(self, ref: str, platform: Platform, ins: I.Instruction) -> tuple[Vertex, ResolvedImage]:
        res = self._resolve(ins, lambda: self.opts.resolver.resolve_image(ref, platform))
        v = Vertex(op=ImageSource(ref=res.ref, digest=res.digest, platform=platform), name=f"FROM {res.ref}")
        return v, res

    def _resolve(self, ins: I.Instruction, call: Callable[[], ResolvedImage]) -> ResolvedImage:
        """Resolver failures (bad reference, registry errors) keep their type and get the
        instruction's location (`Dockerfile:LINE`) when they have none."""
        try:
            return call()
        except BuildCancelled:
            raise
        except PybuildError as e:
            raise e.at(f"{self.opts.filename}:{ins.line}")

    def _named(self, name: str, platform: Platform, ins: I.Instruction) -> _Base:
        nc = self.opts.named_contexts[name]
        if nc.kind == "local":
            v = Vertex(op=LocalSource(name=name), name=f"[context {name}] load from client")
            return _Base(vertex=v, config=_SCRATCH_CONFIG, platform=platform)
        if nc.kind == "oci-layout":
            res = self._resolve(ins, lambda: self.opts.resolver.resolve_oci_layout(nc.value, nc.tag, platform))
            v = Vertex(op=OCILayoutSource(path=nc.value, tag=nc.tag, digest=res.digest, platform=platform),
                       name=f"[context {name}] {nc.value}")
        else:
            res = self._resolve(ins, lambda: self.opts.resolver.resolve_image(nc.value, platform))
            v = Vertex(op=ImageSource(ref=res.ref, digest=res.digest, platform=platform), name=f"FROM {res.ref}")
        return _Base(vertex=v, config=res.config.config, platform=res.config.platform or platform,
                     base_history=res.config.history, author=res.config.author)

    def from_ref(self, st: StageState, ins: I.Instruction, ref: str) -> Vertex:
        """`--from=` / `from=`: named context, stage (name or index) or image reference. Taken as
        written: BuildKit expands no ARG there (`--from=$STAGE` is an invalid image reference)."""
        if ref in self.opts.named_contexts:
            return self._named(ref, st.platform, ins).vertex
        before = self._current[-1] + 1 if self._current else None     # a stage above (or this one)
        stage = self.stages.lookup(ref, before=before)
        if stage is not None:
            return self.convert_stage(stage).vertex
        key = (ref, str(st.platform))
        if key not in self._images:
            self._images[key] = self._image(ref, st.platform, ins)[0]
        return self._images[key]

    def _base(self, stage: Stage) -> _Base:
        f = stage.from_
        platform = self.opts.platform
        if f.platform:
            try:
                platform = self._platform(self._expand_meta(f, f.platform))
            except ValueError as e:
                raise DockerfileError(str(e), filename=self.opts.filename, line=f.line) from e
        ref = self._expand_meta(f, f.image)
        if ref in self.opts.named_contexts:
            return self._named(ref, platform, f)
        parent = self.stages.lookup(ref, before=stage.index, exact=True)
        if parent is not None:
            r = self.convert_stage(parent)
            return _Base(vertex=r.vertex, config=r.config, platform=r.platform, history=r.history,
                         base_history=r.base_history, author=r.author, fresh=False, args=r.args,
                         arg_overrides=r.arg_overrides)
        if ref.lower() == "scratch":
            return _Base(vertex=Vertex(op=ScratchSource(), name="FROM scratch"),
                         config=_SCRATCH_CONFIG, platform=platform)
        if not ref:
            raise DockerfileError("base name (FROM) should not be blank", filename=self.opts.filename, line=f.line)
        v, res = self._image(ref, platform, f)
        return _Base(vertex=v, config=res.config.config, platform=res.config.platform or platform,
                     base_history=res.config.history, author=res.config.author)

    def _platform(self, text: str) -> Platform:
        """A `--platform` value. A lone OS (`linux`) or architecture (`arm64`) takes the rest
        from the build platform, as containerd's platform parser (BuildKit's) does."""
        if "/" not in text:
            b = self.opts.build_platform
            if text.lower() in _KNOWN_OS:
                return Platform(os=text.lower(), architecture=b.architecture, variant=b.variant)
            if text.lower() in _KNOWN_ARCH:
                return Platform.parse(f"{b.os}/{text.lower()}")
        return Platform.parse(text)

    # ------------------------------------------------------------ stages
    def convert_stage(self, stage: Stage) -> StageResult:
        if stage.index in self.results:
            return self.results[stage.index]
        if stage.index in self._active:
            raise DockerfileError(f"circular dependency detected on stage: {stage.label}",
                                  filename=self.opts.filename, line=stage.from_.line)
        self._active.add(stage.index)
        self._current.append(stage.index)
        base = self._base(stage)
        last = stage.index == len(self.stages.stages) - 1
        st = StageState(filename=self.opts.filename, label="" if (last and not stage.name) else stage.label,
                        total=len(stage.commands) + 1, vertex=base.vertex, config=base.config,
                        platform=base.platform, build_args=self.opts.build_args, meta_args=self.meta,
                        escape=self.escape, history=list(base.history), base_history=base.base_history,
                        author=base.author, args=dict(base.args), arg_overrides=dict(base.arg_overrides))
        if base.fresh:
            st.vertex = Vertex(op=base.vertex.op, inputs=base.vertex.inputs, name=st.next_name(base.vertex.name),
                               source_location=st.location(stage.from_))
        self._onbuild(st, stage)
        for n, cmd in enumerate(stage.commands):
            st.step = n + 2
            self.dispatch(st, cmd)
        result = result_of(st)
        self.results[stage.index] = result
        self._active.discard(stage.index)
        self._current.pop()
        return result

    def _onbuild(self, st: StageState, stage: Stage) -> None:
        triggers = st.config.onbuild
        if not triggers:
            return
        st.set_config(onbuild=())
        for text in triggers:
            raw = parse_line(text, filename=self.opts.filename, line=stage.from_.line)
            ins = replace(parse_instruction(raw, filename=self.opts.filename, escape=self.escape),
                          original=f"ONBUILD {raw.original}")
            if isinstance(ins, (I.From, I.Onbuild, I.Maintainer)):
                raise DockerfileError(f"{raw.keyword} isn't allowed as an ONBUILD trigger",
                                      filename=self.opts.filename, line=stage.from_.line)
            self.dispatch(st, ins)

    def dispatch(self, st: StageState, cmd: I.Instruction) -> None:
        if dispatch_meta(st, cmd):
            return
        if isinstance(cmd, I.Run):
            dispatch_run(st, cmd, self)
        elif isinstance(cmd, I.Copy):
            dispatch_copy(st, cmd, self)
        else:
            raise st.error(cmd, f"unexpected instruction {cmd.original!r}")


def convert(dockerfile: bytes | str, opts: FrontendOptions) -> BuildGraph:
    """Convert a Dockerfile into a BuildGraph for `opts.target` (default: the last stage).

    `dockerfile` is the file's content as read from disk (`Path.read_bytes()`): bytes that are not
    UTF-8 are kept (surrogate escapes, see frontend.text) and reach the ops unchanged; the image
    config and history get U+FFFD for them. Text (`str`) is taken as given.
    Raises DockerfileError (file and line) for anything wrong with the Dockerfile itself; errors
    of the resolver keep their type and get the instruction's location."""
    try:
        return _convert(decode_dockerfile(dockerfile), opts)
    except PybuildError as e:
        e.message = valid_utf8(e.message)      # may quote the Dockerfile's undecodable bytes
        raise


def _convert(dockerfile: str, opts: FrontendOptions) -> BuildGraph:
    parsed = parse_dockerfile(dockerfile, filename=opts.filename)
    typed = tuple(parse_instruction(raw, filename=opts.filename, escape=parsed.escape)
                  for raw in parsed.instructions)
    stages = split_stages(typed, filename=opts.filename)
    conv = _Converter(opts, stages, parsed.escape)
    target = stages.target(opts.target, filename=opts.filename)
    order = build_order(stages, target, conv.expand_ref, filename=opts.filename,
                        is_named_context=lambda n: n in opts.named_contexts)
    for stage in order:
        conv.convert_stage(stage)
    res = conv.results[target.index]
    cfg = ImageConfig(platform=res.platform, config=valid_strings(res.config), author=valid_utf8(res.author))
    history = tuple(replace(h, created_by=valid_utf8(h.created_by)) for h in res.history)
    return BuildGraph.from_target(Target(vertex=res.vertex, config=cfg, history=history,
                                         base_history=res.base_history))
