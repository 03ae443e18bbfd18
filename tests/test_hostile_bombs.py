"""Decompression bombs: a layer applied from the store and an archive unpacked by ADD stop as soon
as their output passes the limit (`ExpandLimit`: max_bytes and max_ratio x the compressed size),
with a LayerError that names the layer or the archive, quickly, without filling the disk, and
leave nothing half-written in the snapshots. Every stored blob is verified when it is read."""
from __future__ import annotations

import gzip
import io
import os
import shutil
import sys
import tarfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from builder.errors import DigestMismatchError, LayerError  # noqa: E402
from builder.image.digest import Digest  # noqa: E402
from builder.image.oci import Descriptor, MediaType  # noqa: E402
from builder.image.view import LayerRef  # noqa: E402
from builder.layer.apply import apply_layer  # noqa: E402
from builder.layer.limits import CappedReader, ExpandLimit  # noqa: E402
from builder.sandbox.fileop import SourceDir, apply_file_op  # noqa: E402
from builder.solve import ops  # noqa: E402
from builder.store.content import ContentStore  # noqa: E402
from builder.store.snapshot import NativeSnapshotter, OverlaySnapshotter  # noqa: E402

MiB = 1 << 20
SMALL = ExpandLimit(max_bytes=4 * MiB, max_ratio=100)


class Zeros(io.RawIOBase):
    """`n` zero bytes, produced on demand (a huge file body without the memory)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.left = n

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:  # type: ignore[no-untyped-def,override]
        k = min(len(buf), self.left)
        buf[:k] = bytes(k)
        self.left -= k
        return k


def zeros_tar(files: dict[str, int]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, size in files.items():
            ti = tarfile.TarInfo(name)
            ti.size = size
            tf.addfile(ti, io.BufferedReader(Zeros(size)))
    return buf.getvalue()


def sparse_tar(realsize: int) -> bytes:
    """A PAX 1.0 sparse entry: 1 byte stored, `realsize` bytes when extracted."""
    sparse_map = f"1\n{realsize - 1}\n1\n".encode().ljust(512, b"\0")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        ti = tarfile.TarInfo("GNUSparseFile.0/big")
        ti.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.name": "big",
                          "GNU.sparse.realsize": str(realsize)}
        data = sparse_map + b"x"
        ti.size = len(data)
        tf.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def disk_use(top: Path) -> int:
    return sum(os.lstat(os.path.join(d, f)).st_blocks * 512 for d, _, fs in os.walk(top) for f in fs)


def gz_layer(store: ContentStore, raw: bytes) -> LayerRef:
    blob = gzip.compress(raw, compresslevel=1, mtime=0)
    d, size = store.put_bytes(blob)
    return LayerRef(descriptor=Descriptor(media_type=MediaType.oci_layer("gzip"), digest=d, size=size),
                    diff_id=Digest.of_bytes(raw))


def test_expand_limit_rule():
    lim = ExpandLimit()
    assert lim.budget(10) == 1 << 30 and lim.budget(100 << 20) == 100 * (100 << 20)
    assert lim.budget(None) == 1 << 30 and ExpandLimit(max_bytes=None).budget(10) is None
    r = CappedReader(io.BytesIO(bytes(3 * MiB)), 2 * MiB, what="thing")
    with pytest.raises(LayerError, match="thing expands beyond the 2097152-byte limit"):
        while r.read(MiB):
            pass
    assert r.count <= 2 * MiB + MiB


@pytest.mark.parametrize("snap_cls", [NativeSnapshotter, OverlaySnapshotter])
def test_decompression_bomb_gzip_of_zeros_layer_refused(tmp_path, snap_cls):
    store = ContentStore(tmp_path / "store")
    layer = gz_layer(store, zeros_tar({"zeros": 64 * MiB}))
    assert layer.descriptor.size < MiB
    snap = snap_cls(tmp_path / "root", store, limit=SMALL)
    t0 = time.monotonic()
    with pytest.raises(LayerError, match=f"layer {layer.descriptor.digest}.*expands beyond"):
        snap.ensure((layer,))
    assert time.monotonic() - t0 < 5
    assert [p.name for p in snap.dir.iterdir() if not p.name.endswith(".lock") and p.name != "empty"] == []
    assert disk_use(tmp_path / "root") < MiB


@pytest.mark.parametrize("snap_cls", [NativeSnapshotter, OverlaySnapshotter])
def test_decompression_bomb_many_small_files_refused(tmp_path, snap_cls):
    store = ContentStore(tmp_path / "store")
    layer = gz_layer(store, zeros_tar({f"f{i:03}": 256 * 1024 for i in range(64)}))
    snap = snap_cls(tmp_path / "root", store, limit=SMALL)
    with pytest.raises(LayerError, match="expands beyond"):
        snap.ensure((layer,))
    assert disk_use(tmp_path / "root") < 5 * MiB
    assert not [p for p in snap.dir.iterdir() if p.name.startswith(".t")]


def test_decompression_bomb_after_the_tar_end_marker_refused(tmp_path):
    """Zeros after the end of the archive are still read (to check the diff_id): capped too."""
    store = ContentStore(tmp_path / "store")
    layer = gz_layer(store, zeros_tar({"small": 10}) + bytes(64 * MiB))
    snap = NativeSnapshotter(tmp_path / "root", store, limit=SMALL)
    with pytest.raises(LayerError, match="expands beyond"):
        snap.ensure((layer,))
    assert not [p for p in snap.dir.iterdir() if p.name.startswith(".t")]


def test_decompression_bomb_sparse_file_refused_before_writing(tmp_path):
    dest = tmp_path / "d"
    dest.mkdir()
    raw = sparse_tar(1 << 40)
    t0 = time.monotonic()
    with pytest.raises(LayerError, match="'big'.*expands beyond"):
        apply_layer(io.BytesIO(raw), dest, whiteouts="delete", what="layer x")
    assert time.monotonic() - t0 < 2
    assert os.listdir(dest) == []


def test_lying_header_refused_before_reading_the_body(tmp_path):
    """A header that declares 1 TiB over a short stream: refused at the header."""
    ti = tarfile.TarInfo("huge")
    ti.size = 1 << 40
    raw = ti.tobuf(tarfile.PAX_FORMAT) + bytes(4096)
    with pytest.raises(LayerError, match="expands beyond"):
        apply_layer(io.BytesIO(raw), tmp_path, whiteouts="overlay")
    assert not (tmp_path / "huge").exists()


def test_legitimate_incompressible_layer_passes_by_ratio(tmp_path):
    store = ContentStore(tmp_path / "store")
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tf:
        ti = tarfile.TarInfo("random")
        data = os.urandom(6 * MiB)
        ti.size = len(data)
        tf.addfile(ti, io.BytesIO(data))
    layer = gz_layer(store, raw.getvalue())
    tree = NativeSnapshotter(tmp_path / "root", store, limit=SMALL).ensure((layer,))
    assert (tree / "random").read_bytes() == data


def _add(root: Path, ctx: Path, name: str, limit: ExpandLimit) -> None:
    apply_file_op(root, ops.FileOp(actions=(ops.Copy(src=1, src_paths=(name,), dest="/x/", unpack=True),)),
                  {1: SourceDir(path=ctx)}, limit=limit)


@pytest.mark.parametrize("kind", ["gzip-of-zeros", "sparse"])
def test_decompression_bomb_add_local_archive_refused(tmp_path, kind):
    ctx, root = tmp_path / "ctx", tmp_path / "root"
    ctx.mkdir()
    root.mkdir()
    raw = zeros_tar({"a": MiB, "zeros": 64 * MiB}) if kind == "gzip-of-zeros" else sparse_tar(1 << 40)
    (ctx / "bomb.tar.gz").write_bytes(gzip.compress(raw, compresslevel=1))
    t0 = time.monotonic()
    with pytest.raises(LayerError, match="archive bomb.tar.gz.*expands beyond"):
        _add(root, ctx, "bomb.tar.gz", SMALL)
    assert time.monotonic() - t0 < 5
    assert disk_use(root) < 2 * MiB
    if kind == "gzip-of-zeros":                                   # the limit is overridable
        _add(root, ctx, "bomb.tar.gz", ExpandLimit(max_bytes=None))
        assert (root / "x/zeros").stat().st_size == 64 * MiB
        shutil.rmtree(root / "x")


def test_stored_blob_read_to_the_end_and_verified(tmp_path):
    """A replaced byte after the tar's end marker (never needed by the extractor) is still
    caught: the snapshot is refused and nothing is left."""
    store = ContentStore(tmp_path / "store")
    raw = zeros_tar({"f": 100})
    d, size = store.put_bytes(raw)
    layer = LayerRef(descriptor=Descriptor(media_type=MediaType.oci_layer("uncompressed"), digest=d, size=size),
                     diff_id=Digest.of_bytes(raw))
    blob = store.path(d)
    os.chmod(blob, 0o644)
    tampered = bytearray(raw)
    tampered[-1] = 1
    blob.write_bytes(bytes(tampered))
    snap = NativeSnapshotter(tmp_path / "root", store)
    with pytest.raises(DigestMismatchError):
        snap.ensure((layer,))
    assert [p.name for p in snap.dir.iterdir() if not p.name.endswith(".lock")] == ["empty"]


@pytest.mark.parametrize("type_", [tarfile.XHDTYPE, tarfile.GNUTYPE_LONGNAME])
def test_huge_extended_header_refused_before_it_is_read(tmp_path, type_):
    """tarfile reads a PAX header or a GNU long name whole: a 1 GiB one is refused at once."""
    ti = tarfile.TarInfo("././@PaxHeader" if type_ == tarfile.XHDTYPE else "././@LongLink")
    ti.type, ti.size = type_, 1 << 30
    raw = ti.tobuf(tarfile.GNU_FORMAT) + bytes(8192)
    t0 = time.monotonic()
    with pytest.raises(LayerError, match="layer y: extended header"):
        apply_layer(io.BytesIO(raw), tmp_path, whiteouts="delete", what="layer y", max_bytes=None)
    assert time.monotonic() - t0 < 2


def test_every_store_reader_verifies_a_replaced_blob(tmp_path):
    """`open` and `open_verified` both check the digest (there is no unverified reader), and a
    size that does not match is an error."""
    from builder.errors import StoreError
    store = ContentStore(tmp_path / "store")
    d, size = store.put_bytes(b"original content")
    store.path(d).write_bytes(b"replaced content")
    for reader in (store.open(d), store.open_verified(d, size)):
        with reader as f, pytest.raises(DigestMismatchError):
            while f.read(4):
                pass
    d2, size2 = store.put_bytes(b"fine")
    with store.open_verified(d2, size2 + 1) as f, pytest.raises(StoreError, match="expected 5"):
        f.read()
        f.read()
