"""Layer compression with pinned codec settings, and detection by magic bytes.

Compressed bytes depend on the codec, its version, the level and (zstd) on whether threads are
used at all, so all of them are pinned here, in one place, for reproducible digests: gzip through
python-isal `igzip` at level ISAL_LEVEL when importable (else stdlib gzip at GZIP_LEVEL), header
without file name and with mtime 0; zstd through `zstandard` at ZSTD_LEVEL with ZSTD_THREADS worker
threads (output is identical for any thread count >= 1 and differs from threads=0).
"""
from __future__ import annotations

import bz2
import gzip
import io
import lzma
from typing import Any, BinaryIO, Literal, Protocol

from builder.image.oci import Compression

ISAL_LEVEL = 1
GZIP_LEVEL = 6
ZSTD_LEVEL = 3
ZSTD_THREADS = 2
CHUNK = 1 << 20


__all__ = ["Compressor", "detect_compression", "open_uncompressed", "ISAL_LEVEL", "GZIP_LEVEL",
           "ZSTD_LEVEL", "ZSTD_THREADS"]


class Readable(Protocol):
    """Anything bytes can be read from (a file, a decompressor, the store's VerifyingReader)."""

    def read(self, n: int = -1, /) -> bytes: ...


class Sink(Protocol):
    """Anything bytes can be written to (a file, the store's IngestWriter, a DigestingWriter)."""

    def write(self, b: bytes, /) -> int: ...


class Compressor:
    """write() compressed bytes into `out`; close() finishes the stream (does not close `out`)."""

    def __init__(self, out: "Sink", compression: Compression) -> None:
        self._out = out
        self._z: Any
        if compression == "uncompressed":
            self._z = None
        elif compression == "gzip":
            try:
                from isal import igzip
                self._z = igzip.IGzipFile(filename="", mode="wb", fileobj=out, compresslevel=ISAL_LEVEL, mtime=0)
            except ImportError:
                self._z = gzip.GzipFile(filename="", mode="wb", fileobj=out,  # type: ignore[call-overload]
                                        compresslevel=GZIP_LEVEL, mtime=0)
        elif compression == "zstd":
            import zstandard
            cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL, threads=ZSTD_THREADS)
            self._z = cctx.stream_writer(out, closefd=False)  # type: ignore[arg-type]
        else:
            raise ValueError(f"unknown compression {compression!r}")

    def write(self, b: bytes) -> int:
        if self._z is None:
            return self._out.write(b)
        self._z.write(b)
        return len(b)

    def close(self) -> None:
        if self._z is not None:
            self._z.close()



class _Prefixed(io.RawIOBase):
    def __init__(self, head: bytes, rest: Readable) -> None:
        super().__init__()
        self._head = head
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:  # type: ignore[no-untyped-def,override]
        if self._head:
            n = min(len(buf), len(self._head))
            buf[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._rest.read(len(buf))
        buf[: len(data)] = data
        return len(data)


def detect_compression(head: bytes) -> Literal["gzip", "zstd", "bzip2", "xz", "uncompressed"]:
    if head[:2] == b"\x1f\x8b":
        return "gzip"
    if head[:4] == b"\x28\xb5\x2f\xfd":
        return "zstd"
    if head[:3] == b"BZh":
        return "bzip2"
    if head[:6] == b"\xfd7zXZ\x00":
        return "xz"
    return "uncompressed"


def open_uncompressed(f: Readable) -> BinaryIO:
    """A streaming reader of `f`'s uncompressed bytes (gzip, zstd, bzip2, xz or plain, told
    apart by magic bytes). Closing the result does not close `f`."""
    head = b""
    while len(head) < 6:
        b = f.read(6 - len(head))
        if not b:
            break
        head += b
    raw = io.BufferedReader(_Prefixed(head, f), CHUNK)
    kind = detect_compression(head)
    if kind == "gzip":
        try:
            from isal import igzip
            return igzip.IGzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
        except ImportError:
            return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    if kind == "zstd":
        import zstandard
        return zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True,  # type: ignore[return-value]
                                                          closefd=False)
    if kind == "bzip2":
        return bz2.BZ2File(raw, "rb")  # type: ignore[return-value]
    if kind == "xz":
        return lzma.LZMAFile(raw, "rb")  # type: ignore[return-value]
    return raw  # type: ignore[return-value]


