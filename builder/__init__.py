"""pybuild: an OCI image builder. Public API (lazy, PEP 562, so `pybuild` starts fast):

    from builder import build, BuildRequest, BuildResult, PybuildError
"""
from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:     # typing stays out of the step init's start-up (it imports this package)
    from typing import Any

__all__ = ["build", "BuildRequest", "BuildResult", "OutputSpec", "PybuildError", "DockerfileError", "ExecError"]

_LAZY = {
    "build": "builder.api", "BuildRequest": "builder.request", "BuildResult": "builder.request", "OutputSpec": "builder.request",
    "PybuildError": "builder.errors", "DockerfileError": "builder.errors", "ExecError": "builder.errors",
}


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'builder' has no attribute {name!r}")
    import importlib
    return getattr(importlib.import_module(mod), name)
