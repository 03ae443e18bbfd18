import io
import multiprocessing
import os
from pathlib import Path

import pytest

from builder.image.digest import Digest
from builder.errors import DigestMismatchError, StoreError
from builder.image.oci import Descriptor, MediaType
from builder.store.content import ContentStore


def test_put_is_atomic_idempotent_and_verified(tmp_path):
    s = ContentStore(tmp_path)
    d, n = s.put(io.BytesIO(b"hello"))
    assert d == Digest.of_bytes(b"hello") and n == 5
    assert s.path(d).read_bytes() == b"hello"
    assert s.put(io.BytesIO(b"hello"), expected=d) == (d, 5)
    assert list(s.ingest_dir.iterdir()) == []


def test_put_rejects_wrong_digest_and_size_and_leaves_nothing(tmp_path):
    s = ContentStore(tmp_path)
    with pytest.raises(DigestMismatchError):
        s.put(io.BytesIO(b"evil"), expected=Digest.of_bytes(b"good"))
    with pytest.raises(StoreError):
        s.put(io.BytesIO(b"abc"), expected_size=4)
    assert not s.has(Digest.of_bytes(b"evil"))
    assert list(s.ingest_dir.iterdir()) == []


def test_read_bytes_detects_corruption(tmp_path):
    s = ContentStore(tmp_path)
    d, _ = s.put_bytes(b"config")
    os.chmod(s.path(d), 0o644)
    s.path(d).write_bytes(b"tampered")
    with pytest.raises(DigestMismatchError):
        s.read_bytes(d)


def _tagger(root, i):
    s = ContentStore(root)
    d, n = s.put_bytes(f"m{i}".encode())
    for _ in range(20):
        s.tag(f"img{i}", Descriptor(media_type=MediaType.OCI_MANIFEST, digest=d, size=n))


def test_tags_survive_concurrent_processes(tmp_path):
    procs = [multiprocessing.Process(target=_tagger, args=(tmp_path, i)) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
        assert p.exitcode == 0
    names = [t.name for t in ContentStore(tmp_path).list_tags()]
    assert names == ["img0", "img1", "img2", "img3"]


def test_stale_entries_of_dead_processes_are_removed_live_ones_kept(tmp_path):
    import subprocess
    from builder.store.content import remove_stale
    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / f"ingest-{dead.pid}-abc").write_bytes(b"partial")
    (tmp_path / f"build-{dead.pid}-x").mkdir()
    (tmp_path / f"ingest-{os.getpid()}-mine").write_bytes(b"in progress")
    (tmp_path / "unrelated").write_bytes(b"")
    assert remove_stale(tmp_path, "ingest-") == 1
    assert remove_stale(tmp_path, "build-") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"ingest-{os.getpid()}-mine", "unrelated"]


def test_verified_reads_catch_corruption_at_the_end(tmp_path):
    from builder.store.content import VerifyingReader
    s = ContentStore(tmp_path)
    d, n = s.put_bytes(b"x" * 1000)
    with s.open_verified(d, n) as f:
        assert f.read() == b"x" * 1000
    os.chmod(s.path(d), 0o644)
    s.path(d).write_bytes(b"y" * 1000)
    with pytest.raises(DigestMismatchError):
        with s.open_verified(d, n) as f:
            while f.read(100):
                pass
    with pytest.raises(StoreError):
        VerifyingReader(io.BytesIO(b"z" * 11), Digest.of_bytes(b"z" * 10), 10).read()


def test_corrupt_layer_blob_is_not_exported_or_applied(tmp_path):
    """The exporter streams blobs through a verifying reader."""
    from builder.export.assemble import assemble_image
    from builder.export.oci import write_oci_tar
    from builder.image.view import LayerRef
    s = ContentStore(tmp_path)
    d, n = s.put_bytes(b"layer-bytes")
    layer = LayerRef(descriptor=Descriptor(media_type=MediaType.OCI_LAYER, digest=d, size=n), diff_id=d)
    from builder.image.oci import ImageConfig
    img = assemble_image(s, (layer,), ImageConfig())
    write_oci_tar(s, img, io.BytesIO())
    s.path(d).write_bytes(b"LAYER-BYTES")
    with pytest.raises(DigestMismatchError):
        write_oci_tar(s, img, io.BytesIO())


def _deep_chain(top, depth, name="d" * 40):
    """A directory chain `depth` levels deep (made with dir fds: its paths pass PATH_MAX)."""
    import os
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(depth):
        os.mkdir(name, dir_fd=fd)
        nfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = nfd
    with open(os.open("leaf", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "w") as f:
        f.write("x")
    os.close(fd)


def test_remove_tree_of_any_depth_without_recursion(tmp_path):
    """A RUN can leave a 1,100-deep tree: removal must neither recurse per level nor pass PATH_MAX."""
    from builder.layer.rmtree import remove_tree
    t = tmp_path / "deep"
    t.mkdir()
    _deep_chain(t, 3000)
    remove_tree(t)
    assert not t.exists()


def test_remove_tree_does_not_follow_symlinks_and_opens_locked_dirs(tmp_path):
    import os
    from builder.layer.rmtree import remove_tree
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("k")
    t = tmp_path / "t"
    (t / "a" / "locked").mkdir(parents=True)
    (t / "a" / "locked" / "f").write_text("x")
    os.symlink(outside, t / "a" / "link")
    os.symlink(outside / "keep", t / "filelink")
    os.chmod(t / "a" / "locked", 0)
    remove_tree(t)
    remove_tree(t)                     # a missing path is fine
    assert not t.exists() and (outside / "keep").read_text() == "k"


def test_start_up_clean_up_of_a_deep_stale_dir_never_fails(tmp_path):
    from builder.store.content import remove_stale
    stale = tmp_path / "build-999999999-x"
    stale.mkdir()
    _deep_chain(stale, 1500)
    assert remove_stale(tmp_path, "build-") == 1
    assert not stale.exists()


def test_root_is_created_private_and_an_existing_one_of_ours_is_tightened(tmp_path):
    import os
    import stat
    from builder.store.root import prepare_root
    r = prepare_root(tmp_path / "a" / "root")
    assert stat.S_IMODE(os.stat(r).st_mode) == 0o700
    old = tmp_path / "old"
    old.mkdir(mode=0o755)
    os.chmod(old, 0o755)
    prepare_root(old)
    assert stat.S_IMODE(os.stat(old).st_mode) == 0o700


def test_root_writable_by_others_or_owned_by_another_user_is_refused(tmp_path):
    import os
    from builder.errors import StoreError
    from builder.store.root import prepare_root
    open_root = tmp_path / "open"
    open_root.mkdir()
    os.chmod(open_root, 0o777)
    with pytest.raises(StoreError, match="writable by others"):
        prepare_root(open_root)
    if os.geteuid() == 0:
        theirs = tmp_path / "theirs"
        theirs.mkdir(mode=0o700)
        os.chown(theirs, 65534, 65534)
    else:
        theirs = Path("/")
    with pytest.raises(StoreError, match="not to you"):
        prepare_root(theirs)


def test_cli_refuses_a_root_writable_by_others(pybuild, workdir):
    import os
    root = workdir / "open-root"
    root.mkdir()
    os.chmod(root, 0o777)
    r = pybuild("images", root=root)
    assert r.returncode == 1 and "writable by others" in r.stderr and "Traceback" not in r.stderr, r.stderr


def _gz_layer(store, data: bytes, diff_id=None):
    import gzip
    import hashlib
    from builder.image.view import LayerRef
    blob = gzip.compress(data)
    d, n = store.put_bytes(blob)
    did = diff_id or Digest("sha256", hashlib.sha256(data).hexdigest())
    return LayerRef(descriptor=Descriptor(media_type=MediaType.OCI_LAYER_GZIP, digest=d, size=n), diff_id=did)


def test_recompression_checks_the_diff_id_and_caps_a_bomb(tmp_path):
    from builder.errors import LayerError
    from builder.export.assemble import recompress
    from builder.image.oci import Compression
    from builder.layer.limits import ExpandLimit
    store = ContentStore(tmp_path)
    good = _gz_layer(store, b"a" * 1000)
    assert recompress(store, good, Compression.ZSTD).diff_id == good.diff_id
    lying = _gz_layer(store, b"b" * 1000, diff_id=Digest.of_bytes(b"something else"))
    with pytest.raises(DigestMismatchError):
        recompress(store, lying, Compression.ZSTD)
    bomb = _gz_layer(store, bytes(8 << 20))
    with pytest.raises(LayerError):
        recompress(store, bomb, Compression.ZSTD, ExpandLimit(max_bytes=1 << 20, max_ratio=10))
    assert not list((tmp_path / "converted").glob(f"{bomb.descriptor.digest.hex}*")), "nothing remembered"
