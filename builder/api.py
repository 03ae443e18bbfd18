"""build(request) -> BuildResult: wires frontend → solver → exporters. No printing here."""
from __future__ import annotations

from builder.request import BuildRequest, BuildResult, OutputSpec

__all__ = ["build", "BuildRequest", "BuildResult", "OutputSpec"]


def build(request: BuildRequest) -> BuildResult:
    """Build the request's Dockerfile. Raises DockerfileError / StepError / ... (PybuildError)."""
    from builder.session import BuildSession
    with BuildSession(request) as s:
        return s.run()
