"""The build graph: content-addressed vertices over ops (BuildKit-LLB-like).

`Vertex.digest` covers the op and the input digests; the name and the Dockerfile location are
not part of it, so renaming a stage or moving a line never invalidates anything.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property
from typing import Iterator

import networkx as nx

from builder.image.digest import Digest
from builder.image.oci import ImageConfig, canonical_json
from builder.solve.ops import Op


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceLocation:
    filename: str
    start_line: int
    end_line: int

    def __str__(self) -> str:
        return f"{self.filename}:{self.start_line}"


@dataclass(frozen=True, kw_only=True, eq=False)
class Vertex:
    op: Op
    inputs: tuple["Vertex", ...] = ()
    name: str = ""                             # progress name, e.g. "[stage-1 3/4] RUN make"
    source_location: SourceLocation | None = None
    created_by: str = ""                       # history text, e.g. "RUN /bin/sh -c make # buildkit"

    @cached_property
    def digest(self) -> Digest:
        """sha256 of the op and the input digests. Computed bottom-up without recursion, so a
        chain of any length (thousands of stages) works."""
        stack: list[Vertex] = [self]
        while stack:
            v = stack[-1]
            todo = [i for i in v.inputs if "digest" not in i.__dict__]
            if todo:
                stack.extend(todo)
                continue
            stack.pop()
            if "digest" not in v.__dict__:
                v.__dict__["digest"] = v._own_digest()
        return self.__dict__["digest"]  # type: ignore[no-any-return]

    def _own_digest(self) -> Digest:
        """The digest, once every input's is known."""
        payload = {"op": self.op.op_json(), "inputs": [str(i.__dict__["digest"]) for i in self.inputs]}
        return Digest("sha256", hashlib.sha256(canonical_json(payload)).hexdigest())

    def __hash__(self) -> int:
        return hash(self.digest)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vertex) and other.digest == self.digest


@dataclass(frozen=True, slots=True, kw_only=True)
class HistoryStep:
    """One history entry of the target image. `vertex` is the layer-producing vertex, or None for
    a metadata-only instruction (ENV, LABEL, ...): the solver fills times and empty_layer."""
    created_by: str
    vertex: Vertex | None = None


@dataclass(frozen=True, kw_only=True)
class Target:
    """What the frontend hands over for the target stage: its final vertex, its image config
    (diff_ids/history left for the solver), the base image history steps."""
    vertex: Vertex
    config: ImageConfig
    history: tuple[HistoryStep, ...] = ()
    base_history: tuple = ()                   # oci.History of the base image, kept as is


@dataclass(kw_only=True)
class BuildGraph:
    """A DAG over vertices, with the target. networkx inside; vertices are the domain model."""
    target: Target
    graph: nx.DiGraph = field(default_factory=nx.DiGraph)

    @classmethod
    def from_target(cls, target: Target) -> "BuildGraph":
        g = nx.DiGraph()
        stack = [target.vertex]
        seen: set[Digest] = set()
        while stack:
            v = stack.pop()
            if v.digest in seen:
                continue
            seen.add(v.digest)
            g.add_node(v.digest, vertex=v)
            for i in v.inputs:
                g.add_edge(i.digest, v.digest)
                stack.append(i)
        return cls(target=target, graph=g)

    def vertex(self, digest: Digest) -> Vertex:
        return self.graph.nodes[digest]["vertex"]

    def topological(self) -> Iterator[Vertex]:
        for d in nx.topological_sort(self.graph):
            yield self.vertex(d)

    def dump(self) -> str:
        """A stable text form (golden tests): one line per vertex in topological order."""
        ids: dict[Digest, int] = {}
        lines = []
        for d in nx.lexicographical_topological_sort(self.graph, key=lambda d: (self.vertex(d).name, d)):
            v = self.vertex(d)
            ids[d] = len(ids)
            ins = ",".join(f"v{ids[i.digest]}" for i in v.inputs)
            lines.append(f"v{ids[d]} [{ins}] {type(v.op).__name__} {canonical_json(v.op.op_json()).decode('utf-8', 'backslashreplace')}")
        return "\n".join(lines) + "\n"
