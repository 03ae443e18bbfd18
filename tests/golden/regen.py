"""Regenerate the frontend golden files: for each tests/golden/NAME.Dockerfile write NAME.txt
(graph dump, image config, history, vertex names). Run: python tests/golden/regen.py"""
from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent.parent), str(HERE.parent)]

from builder.image.oci import Platform  # noqa: E402
from frontend.convert import FrontendOptions, convert  # noqa: E402
from test_frontend_fakes import FakeResolver  # noqa: E402


def golden_text(dockerfile: Path) -> str:
    """The golden form of one Dockerfile, converted for linux/amd64 on linux/arm64."""
    opts = FrontendOptions(filename=dockerfile.name, platform=Platform(os="linux", architecture="amd64"),
                           build_platform=Platform(os="linux", architecture="arm64", variant="v8"),
                           build_args={"HTTP_PROXY": "http://proxy:3128"},
                           context_excludes=("*.tmp", "!keep.tmp"), resolver=FakeResolver())
    graph = convert(dockerfile.read_bytes(), opts)
    t = graph.target
    out = [graph.dump(), "--- names"]
    out += sorted(f"{v.name} @ {v.source_location}" for v in graph.topological())
    out += ["--- config", json.loads(t.config.to_bytes()).__repr__(), "--- history"]
    out += [f"{h.created_by!r} {'layer' if h.vertex else 'empty'}" for h in t.history]
    return "\n".join(out) + "\n"


def main() -> None:
    for df in sorted(HERE.glob("*.Dockerfile")):
        (HERE / (df.name.removesuffix(".Dockerfile") + ".txt")).write_text(golden_text(df))


if __name__ == "__main__":
    main()
