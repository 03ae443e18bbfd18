"""Content store: blobs/sha256/<hex> under the pybuild root.

Contract (umoci-like, narrow):
- `put` / `writer` stream into an ingest file, fsync it, check size and digest, rename it into
  place and fsync the directory: atomic and idempotent; a crash leaves at most a stray ingest file.
- readers get a fresh stream per `open` / `open_verified`, both checking the digest as they
  read (at the end: read to the end); there is no unverified reader.
- several processes may share one store: renames are atomic and the tag table is guarded by
  a cross-process flock (fcntl), never by in-memory locks alone.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

from builder.image.digest import Digest, DigestingWriter
from builder.errors import DigestMismatchError, StoreError
from builder.image.oci import Descriptor

CHUNK = 1 << 20


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_output_path(path: Path, *, mode: int = 0o644) -> Iterator[Path]:
    """Write-temp-then-rename for a writer that opens the file itself (another process): yields
    the path of an empty temp file beside `path`; when the block ends normally the file is fsynced
    and renamed onto `path` and the directory fsynced; on any error it is removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-")
    os.close(fd)
    try:
        yield Path(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


@contextlib.contextmanager
def atomic_output(path: Path, *, mode: int = 0o644) -> Iterator[BinaryIO]:
    """Write-temp-then-rename: yields a file in `path`'s directory; when the block ends normally
    it is fsynced and renamed onto `path` (and the directory fsynced); on any error it is removed
    and `path` is untouched. Every file pybuild writes (metadata, outputs) goes through here."""
    with atomic_output_path(path, mode=mode) as tmp, open(tmp, "wb") as f:
        yield f


def atomic_write(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Write-temp-then-rename, fsynced. The only way metadata files are written."""
    with atomic_output(path, mode=mode) as f:
        f.write(data)


@contextlib.contextmanager
def file_lock(path: Path, *, shared: bool = False) -> Iterator[None]:
    """Cross-process lock on `path` (created if missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


class VerifyingReader:
    """Reads a stream, hashing as it goes; raises DigestMismatchError as soon as the bytes read
    reach `size` (or the end) and their digest is not `expected`, StoreError when there are more
    or fewer bytes than `size`. A consumer that stops early verifies nothing: read to the end."""

    def __init__(self, inner: BinaryIO, expected: Digest, size: int | None = None, *, what: str = "blob") -> None:
        self._inner = inner
        self._expected = expected
        self._size = size
        self._what = what
        self._hash = expected.hasher()
        self._n = 0
        self._checked = False

    def read(self, n: int = -1) -> bytes:
        b = self._inner.read(n)
        if b:
            self._hash.update(b)
            self._n += len(b)
            if self._size is not None and self._n > self._size:
                raise StoreError(f"{self._what} {self._expected}: more than {self._size} bytes")
        if not self._checked and (not b or self._n == self._size):
            self._checked = True
            actual = Digest(self._expected.algorithm, self._hash.hexdigest())
            if actual != self._expected:
                raise DigestMismatchError(str(self._expected), str(actual), self._what)
            if self._size is not None and self._n != self._size:
                raise StoreError(f"{self._what} {self._expected}: {self._n} bytes, expected {self._size}")
        return b

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._inner.close()

    def __enter__(self) -> "VerifyingReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class IngestWriter:
    """A blob being written. Use as a context manager; `commit()` moves it into the store.
    Leaving the block without commit discards the ingest file."""

    def __init__(self, store: "ContentStore", expected: Digest | None, expected_size: int | None) -> None:
        self._store = store
        self._expected = expected
        self._expected_size = expected_size
        fd, self._tmp = tempfile.mkstemp(dir=store.ingest_dir, prefix=f"ingest-{os.getpid()}-")
        self._file = os.fdopen(fd, "wb")
        self._hash = DigestingWriter(self._file, expected.algorithm if expected else "sha256")
        self.result: tuple[Digest, int] | None = None

    def write(self, b: bytes) -> int:
        return self._hash.write(b)

    def flush(self) -> None:
        self._hash.flush()

    def commit(self) -> tuple[Digest, int]:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        d, size = self._hash.digest(), self._hash.size
        if self._expected_size is not None and size != self._expected_size:
            raise StoreError(f"blob {self._expected}: size {size}, expected {self._expected_size}")
        if self._expected is not None and d != self._expected:
            raise DigestMismatchError(str(self._expected), str(d), "blob")
        self._store._install(self._tmp, d)
        self.result = (d, size)
        return self.result

    def __enter__(self) -> "IngestWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._file.closed:
            self._file.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._tmp)


def pid_alive(pid: int) -> bool:
    """Is process `pid` (of this pid namespace) still there? Unknown (not ours) counts as alive."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale(directory: Path, prefix: str) -> int:
    """Remove entries `<prefix><pid>-*` of `directory` whose process is gone (a killed build's
    ingest files and temp dirs); returns how many. Live builds' entries are never touched."""
    from builder.layer.rmtree import remove_tree
    removed = 0
    if not directory.is_dir():
        return 0
    for p in directory.iterdir():
        if not p.name.startswith(prefix):
            continue
        pid = p.name[len(prefix):].split("-", 1)[0]
        if not pid.isdigit() or pid_alive(int(pid)):
            continue
        with contextlib.suppress(OSError):
            remove_tree(p)
            removed += 1
    return removed


@dataclass(frozen=True, slots=True, kw_only=True)
class TaggedImage:
    name: str
    descriptor: Descriptor


class ContentStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.blobs_dir = self.root / "blobs"
        self.ingest_dir = self.root / "ingest"
        for d in (self.blobs_dir / "sha256", self.ingest_dir):
            d.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ blobs
    def path(self, d: Digest) -> Path:
        return self.blobs_dir / d.algorithm / d.hex

    def has(self, d: Digest) -> bool:
        return self.path(d).is_file()

    def size(self, d: Digest) -> int:
        return self.path(d).stat().st_size

    def _open_raw(self, d: Digest) -> BinaryIO:
        try:
            return open(self.path(d), "rb")
        except FileNotFoundError as e:
            raise StoreError(f"blob {d} not in store") from e

    def open(self, d: Digest) -> VerifyingReader:
        """A new stream of blob `d`, checked against `d` as it is read (DigestMismatchError
        when the end is reached and the bytes are not `d`'s: a reader must read to the end).
        There is no unverified reader: a replaced blob never reaches an output."""
        return VerifyingReader(self._open_raw(d), d, what="stored blob")

    def open_verified(self, d: Digest, size: int | None = None) -> VerifyingReader:
        """Like open, and more than `size` bytes (or fewer at the end) are an error too."""
        return VerifyingReader(self._open_raw(d), d, size, what="stored blob")

    def read_bytes(self, d: Digest, *, max_size: int = 16 << 20) -> bytes:
        """Read a small blob (manifest, config) whole, verifying digest and size cap."""
        with self._open_raw(d) as f:
            data = f.read(max_size + 1)
        if len(data) > max_size:
            raise StoreError(f"blob {d} larger than {max_size} bytes")
        h = d.hasher()
        h.update(data)
        actual = Digest(d.algorithm, h.hexdigest())
        if actual != d:
            raise DigestMismatchError(str(d), str(actual), "stored blob")
        return data

    def writer(self, expected: Digest | None = None, expected_size: int | None = None) -> IngestWriter:
        return IngestWriter(self, expected, expected_size)

    def put(self, stream: BinaryIO, expected: Digest | None = None,
            expected_size: int | None = None) -> tuple[Digest, int]:
        if expected is not None and self.has(expected):
            return expected, self.size(expected)
        with self.writer(expected, expected_size) as w:
            while True:
                b = stream.read(CHUNK)
                if not b:
                    break
                w.write(b)
            return w.commit()

    def put_bytes(self, data: bytes) -> tuple[Digest, int]:
        d = Digest.of_bytes(data)
        if self.has(d):
            return d, len(data)
        with self.writer(d, len(data)) as w:
            w.write(data)
            return w.commit()

    def _install(self, tmp: str, d: Digest) -> None:
        dest = self.path(d)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)     # idempotent: same digest, same bytes
        fsync_dir(dest.parent)

    def delete(self, d: Digest) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(d).unlink()

    def blobs(self) -> Iterator[Digest]:
        for alg_dir in self.blobs_dir.iterdir():
            for p in alg_dir.iterdir():
                try:
                    yield Digest(alg_dir.name, p.name)
                except ValueError:
                    continue

    # ------------------------------------------------------------------ tags
    @property
    def _tags_path(self) -> Path:
        return self.root / "images.json"

    def _read_tags(self) -> dict[str, dict]:
        try:
            return json.loads(self._tags_path.read_bytes())
        except FileNotFoundError:
            return {}
        except ValueError as e:
            raise StoreError(f"{self._tags_path} is corrupt: {e}") from e

    def tag(self, name: str, desc: Descriptor) -> None:
        with file_lock(self.root / "images.lock"):
            tags = self._read_tags()
            tags[name] = desc.to_json()
            atomic_write(self._tags_path, json.dumps(tags, sort_keys=True, indent=1).encode())

    def resolve_tag(self, name: str) -> Descriptor | None:
        with file_lock(self.root / "images.lock", shared=True):
            d = self._read_tags().get(name)
        return Descriptor.from_json(d) if d else None

    def list_tags(self) -> list[TaggedImage]:
        with file_lock(self.root / "images.lock", shared=True):
            tags = self._read_tags()
        return [TaggedImage(name=k, descriptor=Descriptor.from_json(v)) for k, v in sorted(tags.items())]
