"""Error hierarchy for pybuild.

Callers branch on type, never on message text.

PybuildError
├── UsageError              bad flags / options (CLI exit 2)
├── DockerfileError         parse/convert errors; carries file and line (exit 1)
├── SourceError             missing COPY source, bad context path
├── RegistryError           distribution API failures
│   ├── AuthError
│   ├── NotFoundError
│   └── DigestMismatchError (also raised by the store)
├── StoreError              content store problems
├── SandboxError            namespace / mount / mapping failures
│   └── IdMappingError      step needs ids the user namespace cannot map
├── ExecError               RUN exited non-zero (carries exit code and output tail)
├── LayerError              unsafe or malformed layer tar
└── BuildCancelled          SIGINT/SIGTERM
"""
from __future__ import annotations


class PybuildError(Exception):
    """Root of every error pybuild raises on purpose."""


class UsageError(PybuildError):
    pass


class DockerfileError(PybuildError):
    """An error tied to a Dockerfile location; str() is `FILE:LINE: message`."""

    def __init__(self, message: str, *, filename: str = "Dockerfile", line: int | None = None) -> None:
        self.message = message
        self.filename = filename
        self.line = line
        loc = f"{filename}:{line}" if line is not None else filename
        super().__init__(f"{loc}: {message}")


class SourceError(PybuildError):
    pass


class RegistryError(PybuildError):
    pass


class AuthError(RegistryError):
    pass


class NotFoundError(RegistryError):
    pass


class DigestMismatchError(RegistryError):
    def __init__(self, expected: str, actual: str, what: str = "content") -> None:
        self.expected = expected
        self.actual = actual
        super().__init__(f"{what}: digest mismatch: expected {expected}, got {actual}")


class StoreError(PybuildError):
    pass


class SandboxError(PybuildError):
    pass


class IdMappingError(SandboxError):
    pass


class ExecError(PybuildError):
    def __init__(self, message: str, *, exit_code: int, output_tail: str = "") -> None:
        self.exit_code = exit_code
        self.output_tail = output_tail
        super().__init__(message)


class LayerError(PybuildError):
    pass


class BuildCancelled(PybuildError):
    pass


class StepError(PybuildError):
    """A vertex failed; wraps the cause with the Dockerfile location (`Dockerfile:7: RUN make: ...`)."""

    def __init__(self, message: str, *, location: str | None, cause: BaseException) -> None:
        self.location = location
        self.cause = cause
        super().__init__(f"{location}: {message}" if location else message)
