"""Dockerfile bytes as text, and text that must be valid UTF-8.

A Dockerfile is bytes. BuildKit builds one with bytes that are not UTF-8 and hands those bytes to
the step unchanged, so the frontend reads it with `surrogateescape`: every undecodable byte
becomes one lone surrogate (U+DC80..U+DCFF) in the text, and `os.fsencode()` (or
`str.encode("utf-8", "surrogateescape")`) gives the original bytes back. The ops (RUN arguments
and environment, file names and inline file data) carry such text as it is.

What ends up in JSON that other tools read (the image config: labels, env, cmd…, the history's
`created_by`) and what is shown to a person (vertex names) cannot hold those bytes: there each
undecodable byte becomes U+FFFD, as Go's encoding/json writes it in BuildKit's image config.
"""
from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

__all__ = ["decode_dockerfile", "valid_utf8", "valid_strings"]

T = TypeVar("T")


def decode_dockerfile(data: bytes | str) -> str:
    """The Dockerfile as text: bytes are decoded as UTF-8 with `surrogateescape` (never fails);
    text is taken as given."""
    if isinstance(data, str):
        return data
    return bytes(data).decode("utf-8", "surrogateescape")


def valid_utf8(text: str) -> str:
    """`text` with every surrogate escape (undecodable byte) replaced by U+FFFD."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def valid_strings(value: T) -> T:
    """`value` with `valid_utf8` applied to every string inside it (strings, tuples, frozen
    dataclasses such as ContainerConfig and Healthcheck, nested); other values unchanged."""
    return _valid(value)  # type: ignore[no-any-return]


def _valid(v: Any) -> Any:
    if isinstance(v, str):
        return valid_utf8(v)
    if isinstance(v, tuple):
        return tuple(_valid(x) for x in v)
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        changes = {f.name: _valid(getattr(v, f.name)) for f in dataclasses.fields(v) if f.init}
        return dataclasses.replace(v, **changes)
    return v
