"""Stages of a Dockerfile: global ARGs, stage names and indices, `--target`, dependencies.

`split_stages` groups typed instructions into stages (only ARG may come before the first
FROM). `Stages.lookup` finds a stage by name (case-insensitive; with duplicate names the later
stage wins) or index. `build_order` walks the dependencies of the target (FROM another stage,
`COPY --from`, `RUN --mount=...,from=`) depth first and returns the stages the target needs,
dependencies first, or raises DockerfileError on a cycle or a `--from` naming a stage defined
later in the file (dockerfile 1.19; with duplicate names, the last one above counts). Stages the target does not need are
never returned, so they are never converted (or built).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from builder.errors import DockerfileError

from .instructions import Arg, Copy, From, Instruction, Run

__all__ = ["Stage", "Stages", "split_stages", "build_order", "mount_from"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Stage:
    index: int
    name: str                       # lower-cased, "" if unnamed
    from_: From
    commands: tuple[Instruction, ...]

    @property
    def label(self) -> str:
        return self.name or f"stage-{self.index}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Stages:
    meta_args: tuple[Arg, ...]
    stages: tuple[Stage, ...]

    def lookup(self, ref: str, *, before: int | None = None, exact: bool = False) -> Stage | None:
        """Stage called `ref` (the last one with that name) or with index `ref`. With `before`,
        only stages before that index count. With `exact` the name must match exactly: FROM does
        not fold case (stage names are stored lowercase, so `FROM Upper` is taken as an image
        reference, which is invalid), while COPY --from does."""
        pool = self.stages if before is None else self.stages[:before]
        low = ref if exact else ref.lower()
        for st in reversed(pool):
            if st.name and st.name == low:
                return st
        if ref.isdigit() and int(ref) < len(pool):
            return pool[int(ref)]
        return None

    def target(self, name: str | None, *, filename: str) -> Stage:
        if not name:
            return self.stages[-1]
        st = self.lookup(name)
        if st is None or not st.name:
            raise DockerfileError(f"target stage {name!r} could not be found", filename=filename)
        return st


def split_stages(instructions: tuple[Instruction, ...], *, filename: str) -> Stages:
    meta: list[Arg] = []
    stages: list[Stage] = []
    cur_from: From | None = None
    cur: list[Instruction] = []
    for ins in instructions:
        if isinstance(ins, From):
            if cur_from is not None:
                stages.append(Stage(index=len(stages), name=cur_from.name, from_=cur_from, commands=tuple(cur)))
            cur_from, cur = ins, []
        elif cur_from is None:
            if not isinstance(ins, Arg):
                raise DockerfileError("no build stage in current context (only ARG may come before FROM)",
                                      filename=filename, line=ins.line)
            meta.append(ins)
        else:
            cur.append(ins)
    if cur_from is None:
        raise DockerfileError("no build stage in current context: the Dockerfile has no FROM", filename=filename)
    stages.append(Stage(index=len(stages), name=cur_from.name, from_=cur_from, commands=tuple(cur)))
    return Stages(meta_args=tuple(meta), stages=tuple(stages))


def mount_from(spec: str) -> str:
    """The `from=` value of a raw `--mount` spec ("" if none)."""
    for part in spec.split(","):
        k, _, v = part.partition("=")
        if k.strip().lower() == "from":
            return v.strip().strip("'\"")
    return ""


def _refs(stage: Stage) -> list[tuple[str, int, bool]]:
    """(reference, line, is_from) for every place the stage names another stage or image."""
    out = [(stage.from_.image, stage.from_.line, True)]
    for c in stage.commands:
        if isinstance(c, Copy) and c.from_:
            out.append((c.from_, c.line, False))
        elif isinstance(c, Run):
            out.extend((mount_from(m), c.line, False) for m in c.mounts if mount_from(m))
    return out


def build_order(stages: Stages, target: Stage, expand: Callable[[str], str], *, filename: str,
                is_named_context: Callable[[str], bool]) -> tuple[Stage, ...]:
    """Stages the target needs, dependencies first. `expand` applies the global ARGs to a FROM
    reference (BuildKit leaves `COPY --from=` and `--mount from=` as written); references that are
    named contexts or no stage are images (not followed)."""
    def deps(st: Stage) -> list[tuple[Stage, int]]:
        out = []
        for ref, line, is_from in _refs(st):
            name = expand(ref) if is_from else ref     # BuildKit never expands --from / from=
            if is_named_context(name):
                continue
            dep = stages.lookup(name, before=st.index if is_from else st.index + 1, exact=is_from)
            if dep is None and not is_from and stages.lookup(name) is not None:
                raise DockerfileError(f'cannot copy from stage "{name}", it needs to be defined before current '
                                      f'stage "{st.label}"', filename=filename, line=line)
            if dep is not None:
                out.append((dep, line))
        return out

    # Depth first without recursion (thousands of chained stages): a frame is a stage and the
    # dependencies it has left to visit.
    order: list[Stage] = []
    state: dict[int, str] = {target.index: "visiting"}
    frames: list[tuple[Stage, list[tuple[Stage, int]]]] = [(target, deps(target)[::-1])]
    while frames:
        st, todo = frames[-1]
        if not todo:
            frames.pop()
            state[st.index] = "done"
            order.append(st)
            continue
        dep, line = todo.pop()
        if state.get(dep.index) == "done":
            continue
        if state.get(dep.index) == "visiting":
            raise DockerfileError(f"circular dependency detected on stage: {st.label}", filename=filename, line=line)
        state[dep.index] = "visiting"
        frames.append((dep, deps(dep)[::-1]))
    return tuple(order)
