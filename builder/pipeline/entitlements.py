"""Entitlements a build must be granted (`--allow`), checked on the graph before anything runs."""
from __future__ import annotations

from builder.errors import DockerfileError
from builder.solve.graph import BuildGraph
from builder.solve.ops import ExecOp


def check_entitlements(graph: BuildGraph, allow: tuple[str, ...]) -> None:
    """`RUN --network=host` needs the network.host entitlement (`--allow network.host`), as in
    BuildKit; checked before anything runs."""
    if "network.host" in allow:
        return
    for v in graph.topological():
        if isinstance(v.op, ExecOp) and v.op.network == "host":
            loc = v.source_location
            raise DockerfileError("RUN --network=host needs the network.host entitlement: "
                                  "build with --allow network.host",
                                  filename=loc.filename if loc else "Dockerfile",
                                  line=loc.start_line if loc else None)
