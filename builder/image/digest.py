"""Digest value type and streaming digest helpers.

A bare "sha256:..." string never travels inside builder/: parse it with Digest.parse at the edge.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import BinaryIO

from builder.errors import DigestMismatchError

_HEX = {"sha256": re.compile(r"^[a-f0-9]{64}$"), "sha512": re.compile(r"^[a-f0-9]{128}$")}


@dataclass(frozen=True, slots=True, order=True)
class Digest:
    algorithm: str
    hex: str

    def __post_init__(self) -> None:
        pat = _HEX.get(self.algorithm)
        if pat is None or not pat.match(self.hex):
            raise ValueError(f"invalid digest {self.algorithm}:{self.hex}")

    @classmethod
    def parse(cls, text: str) -> "Digest":
        alg, sep, hx = text.partition(":")
        if not sep:
            raise ValueError(f"invalid digest {text!r}")
        return cls(alg, hx)

    @classmethod
    def of_bytes(cls, data: bytes) -> "Digest":
        return cls("sha256", hashlib.sha256(data).hexdigest())

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"

    def hasher(self) -> "hashlib._Hash":
        return hashlib.new(self.algorithm)


class DigestingReader:
    """Wraps a binary stream; hashes and counts what is read. Caller closes the inner stream."""

    def __init__(self, inner: BinaryIO, algorithm: str = "sha256") -> None:
        self._inner = inner
        self._h = hashlib.new(algorithm)
        self._alg = algorithm
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        b = self._inner.read(n)
        if b:
            self._h.update(b)
            self.size += len(b)
        return b

    def readinto(self, buf) -> int:  # type: ignore[no-untyped-def]
        b = self.read(len(buf))
        buf[: len(b)] = b
        return len(b)

    def digest(self) -> Digest:
        return Digest(self._alg, self._h.hexdigest())

    def close(self) -> None:
        self._inner.close()


class DigestingWriter:
    """Wraps a binary sink; hashes and counts what is written. Does not close the sink."""

    def __init__(self, inner: BinaryIO | None, algorithm: str = "sha256") -> None:
        self._inner = inner
        self._h = hashlib.new(algorithm)
        self._alg = algorithm
        self.size = 0

    def write(self, b: bytes) -> int:
        self._h.update(b)
        self.size += len(b)
        if self._inner is not None:
            self._inner.write(b)
        return len(b)

    def flush(self) -> None:
        if self._inner is not None:
            self._inner.flush()

    def digest(self) -> Digest:
        return Digest(self._alg, self._h.hexdigest())


def verify(expected: Digest, actual: Digest, what: str = "content") -> None:
    if expected != actual:
        raise DigestMismatchError(str(expected), str(actual), what)
