"""Caps against decompression bombs: how far an archive or a layer may expand when it is applied.

The rule (`ExpandLimit.budget`): the output may reach `max_bytes` whatever the input, and
`max_ratio` times the compressed size beyond that; applying stops with a LayerError (naming the
layer or archive) as soon as the output passes both. "Output" is counted twice, each against the
budget: the uncompressed tar stream (`CappedReader`, headers included) and the bytes of the files
it declares (the applier checks each header's size before writing a byte: a sparse or lying entry
of a terabyte is refused at once, without filling the disk).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import BinaryIO

from builder.errors import LayerError

__all__ = ["ExpandLimit", "CappedReader", "DEFAULT_MAX_BYTES", "DEFAULT_MAX_RATIO", "expansion_error"]

DEFAULT_MAX_BYTES = 1 << 30
DEFAULT_MAX_RATIO = 100


@dataclass(frozen=True, slots=True, kw_only=True)
class ExpandLimit:
    """How far one layer or archive may expand. `max_bytes=None` turns the cap off (the ratio
    alone never refuses anything: both parts of the rule must be passed)."""
    max_bytes: int | None = DEFAULT_MAX_BYTES
    max_ratio: int = DEFAULT_MAX_RATIO

    def budget(self, compressed_size: int | None) -> int | None:
        """The most bytes an input of `compressed_size` bytes (None: unknown) may expand to."""
        if self.max_bytes is None:
            return None
        if compressed_size is None:
            return self.max_bytes
        return max(self.max_bytes, self.max_ratio * compressed_size)


def expansion_error(what: str, budget: int) -> LayerError:
    return LayerError(f"{what} expands beyond the {budget}-byte limit (a decompression bomb?); "
                      "raise the limit (max_expand / --max-layer-expansion) if it is legitimate")


class CappedReader:
    """Reads `inner`, raising LayerError (see `expansion_error`) once more than `budget` bytes
    came out of it (None: no cap). Closing it does not close `inner`."""

    def __init__(self, inner: BinaryIO, budget: int | None, *, what: str) -> None:
        self._inner = inner
        self._budget = budget
        self._what = what
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        if self._budget is not None and (n is None or n < 0):
            n = self._budget - self.count + 1          # never more than one byte past the cap
        b = self._inner.read(n)
        self.count += len(b)
        if self._budget is not None and self.count > self._budget:
            raise expansion_error(self._what, self._budget)
        return b

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        pass
