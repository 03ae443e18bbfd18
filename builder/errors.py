"""Error hierarchy for pybuild.

Callers branch on type, never on message text. Every error carries its context as typed fields
(`fields()`), so it can cross a process boundary (the sandbox wire) and arrive as the same class
with the same fields (`rebuild()`), and a location (`Dockerfile:7`) can be added to it without
changing its type (`at()`).

PybuildError
├── UsageError              bad flags / options (CLI exit 2)
├── DockerfileError         parse/convert errors; carries file and line (exit 1)
├── SourceError             missing COPY source, bad context path, ADD URL failures
├── RegistryError           distribution API failures; HTTP status and distribution error codes
│   ├── AuthError
│   ├── NotFoundError
│   └── DigestMismatchError (also raised by the store)
├── StoreError              content store problems
├── SandboxError            namespace / mount / mapping failures
│   └── IdMappingError      step needs ids the user namespace cannot map
├── ExecError               RUN exited non-zero (carries exit code and output tail)
├── LayerError              unsafe or malformed layer tar
├── StepError               a vertex failed: its Dockerfile location, vertex digest and cause
└── BuildCancelled          SIGINT/SIGTERM
"""
from __future__ import annotations

from typing import ClassVar, TypeVar, Union

FieldValue = Union[str, int, bool, None, tuple[str, ...]]
E = TypeVar("E", bound="PybuildError")


class PybuildError(Exception):
    """Root of every error pybuild raises on purpose.

    `message` is the text without a location; `location` (e.g. `Dockerfile:7`) is prepended by
    str() when set. Subclasses name their extra keyword-only constructor fields in `FIELDS`."""

    FIELDS: ClassVar[tuple[str, ...]] = ()

    def __init__(self, message: str = "", *, location: str | None = None) -> None:
        self.message = message
        self.location = location
        super().__init__(message)

    def __str__(self) -> str:
        return f"{self.location}: {self.message}" if self.location else self.message

    def at(self: E, location: str | None) -> E:
        """Add a location (if it has none yet) and return the same error, type unchanged."""
        if location and not self.location:
            self.location = location
        return self

    def fields(self) -> dict[str, FieldValue]:
        """The typed context of this error (the keyword fields of its constructor)."""
        return {name: getattr(self, name) for name in self.FIELDS}


class UsageError(PybuildError):
    pass


class DockerfileError(PybuildError):
    """An error tied to a Dockerfile location; str() is `FILE:LINE: message`."""

    FIELDS: ClassVar[tuple[str, ...]] = ("filename", "line")

    def __init__(self, message: str, *, filename: str = "Dockerfile", line: int | None = None,
                 location: str | None = None) -> None:
        self.filename = filename
        self.line = line
        super().__init__(message, location=location or (f"{filename}:{line}" if line is not None else filename))


class SourceError(PybuildError):
    pass


class RegistryError(PybuildError):
    """`status` is the HTTP status (None when no response came); `codes` the distribution spec's
    error codes of the response body (`UNAUTHORIZED`, `DENIED`, `NAME_UNKNOWN`, …)."""

    FIELDS: ClassVar[tuple[str, ...]] = ("status", "codes")

    def __init__(self, message: str, *, status: int | None = None, codes: tuple[str, ...] = (),
                 location: str | None = None) -> None:
        self.status = status
        self.codes = tuple(codes)
        super().__init__(message, location=location)


class AuthError(RegistryError):
    pass


class NotFoundError(RegistryError):
    pass


class DigestMismatchError(RegistryError):
    FIELDS: ClassVar[tuple[str, ...]] = ("expected", "actual", "what")

    def __init__(self, expected: str = "", actual: str = "", what: str = "content", *,
                 message: str = "", location: str | None = None) -> None:
        self.expected = expected
        self.actual = actual
        self.what = what
        super().__init__(message or f"{what}: digest mismatch: expected {expected}, got {actual}",
                         location=location)


class StoreError(PybuildError):
    pass


class SandboxError(PybuildError):
    pass


class IdMappingError(SandboxError):
    pass


class ExecError(PybuildError):
    FIELDS: ClassVar[tuple[str, ...]] = ("exit_code", "output_tail")

    def __init__(self, message: str, *, exit_code: int, output_tail: str = "",
                 location: str | None = None) -> None:
        self.exit_code = exit_code
        self.output_tail = output_tail
        super().__init__(message, location=location)


class LayerError(PybuildError):
    pass


class BuildCancelled(PybuildError):
    pass


class StepError(PybuildError):
    """A vertex failed. `location` is its Dockerfile location (`Dockerfile:7`), `vertex` its
    digest, `cause` the error it failed with (str() is `Dockerfile:7: RUN make: ...`)."""

    FIELDS: ClassVar[tuple[str, ...]] = ("vertex",)

    def __init__(self, message: str, *, location: str | None = None, vertex: str = "",
                 cause: BaseException | None = None) -> None:
        self.vertex = vertex
        self.cause = cause
        super().__init__(message, location=location)


def error_types() -> dict[str, type[PybuildError]]:
    """Every PybuildError class by name (the wire names of errors)."""
    out: dict[str, type[PybuildError]] = {}
    todo: list[type[PybuildError]] = [PybuildError]
    while todo:
        cls = todo.pop()
        out[cls.__name__] = cls
        todo.extend(cls.__subclasses__())
    return out


def rebuild(kind: str, message: str, location: str | None, fields: dict[str, FieldValue]) -> PybuildError:
    """The error `kind` with `message`, `location` and `fields` as `PybuildError.fields()` gave
    them on the other side; an unknown kind or fields that do not fit give a SandboxError."""
    cls = error_types().get(kind)
    if cls is None:
        return SandboxError(f"{kind}: {message}", location=location)
    kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in fields.items() if k in cls.FIELDS}
    try:
        if cls is DigestMismatchError:
            return DigestMismatchError(message=message, location=location, **kw)  # type: ignore[arg-type]
        return cls(message, location=location, **kw)  # type: ignore[arg-type]
    except TypeError:
        return SandboxError(f"{kind}: {message}", location=location)
