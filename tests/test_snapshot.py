"""Snapshotters (overlay + copying), copy_tree and id-map planning, on real files."""
from __future__ import annotations

import io
import os
import stat
import tarfile
import sys
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from builder.image.digest import Digest  # noqa: E402
from builder.image.view import LayerRef, chain_id  # noqa: E402
from builder.layer.diff import tree_changes  # noqa: E402
from builder.layer.tar import write_layer  # noqa: E402
from builder.image.oci import Descriptor, MediaType  # noqa: E402
from builder.store.snapshot import (MAX_LOWERS, NativeSnapshotter, OverlaySnapshotter, copy_tree,  # noqa: E402
                              remove_tree)
from builder.store.content import ContentStore  # noqa: E402
from builder.sandbox.userns import IdMap, parse_subid_file, require_ids  # noqa: E402
from builder.errors import IdMappingError  # noqa: E402

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (owners, device nodes)")


def layer_from_trees(store: ContentStore, lower: Path, upper: Path) -> LayerRef:
    with store.writer() as w:
        st = write_layer(upper, tree_changes(lower, upper), w, compression="gzip")
        d, size = w.commit()
    return LayerRef(descriptor=Descriptor(media_type=MediaType.oci_layer("gzip"), digest=d, size=size),
                    diff_id=st.diff_id)


@pytest.fixture
def store(tmp_path) -> ContentStore:
    return ContentStore(tmp_path / "store")


def two_layers(store: ContentStore, tmp: Path) -> tuple[LayerRef, LayerRef]:
    """Layer 1: /a/f, /a/g, /d/x, /keep. Layer 2: deletes /a/f, makes /d opaque with /d/y."""
    empty, t1 = tmp / "e", tmp / "t1"
    empty.mkdir()
    for p, text in (("a/f", "f"), ("a/g", "g"), ("d/x", "x"), ("keep", "k")):
        (t1 / p).parent.mkdir(parents=True, exist_ok=True)
        (t1 / p).write_text(text)
    l1 = layer_from_trees(store, empty, t1)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, kind, data in (("a", tarfile.DIRTYPE, b""), ("a/.wh.f", tarfile.REGTYPE, b""),
                                 ("d", tarfile.DIRTYPE, b""), ("d/.wh..wh..opq", tarfile.REGTYPE, b""),
                                 ("d/y", tarfile.REGTYPE, b"y")):
            ti = tarfile.TarInfo(name)
            ti.type, ti.size, ti.mode = kind, len(data), 0o755 if kind == tarfile.DIRTYPE else 0o644
            tf.addfile(ti, io.BytesIO(data))
    raw = buf.getvalue()
    d, size = store.put_bytes(raw)
    l2 = LayerRef(descriptor=Descriptor(media_type=MediaType.oci_layer("uncompressed"), digest=d, size=size),
                  diff_id=Digest.of_bytes(raw))
    return l1, l2


# ---------------------------------------------------------------------- copy_tree

@ROOT_ONLY
def test_copy_tree_preserves_everything(tmp_path):
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d/f").write_bytes(b"data" * 1000)
    os.link(src / "d/f", src / "h")
    os.symlink("d/f", src / "l")
    os.mkfifo(src / "p")
    os.mknod(src / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.lchown(src / "d/f", 1000, 50)
    os.chmod(src / "d/f", 0o4750)
    os.lchown(src / "l", 7, 8)
    os.setxattr(src / "d/f", "user.k", b"v")
    os.utime(src / "d/f", ns=(1, 1_000_000_123))
    os.utime(src / "d", ns=(1, 2_000_000_000))
    copy_tree(src, tmp_path / "dst")
    dst = tmp_path / "dst"
    f = os.lstat(dst / "d/f")
    assert (stat.S_IMODE(f.st_mode), f.st_uid, f.st_gid, f.st_mtime_ns) == (0o4750, 1000, 50, 1_000_000_123)
    assert os.lstat(dst / "h").st_ino == f.st_ino and f.st_nlink == 2
    assert os.readlink(dst / "l") == "d/f" and os.lstat(dst / "l").st_uid == 7
    assert stat.S_ISFIFO(os.lstat(dst / "p").st_mode) and stat.S_ISCHR(os.lstat(dst / "null").st_mode)
    assert os.getxattr(dst / "d/f", "user.k") == b"v"
    assert os.lstat(dst / "d").st_mtime_ns == 2_000_000_000
    assert list(tree_changes(src, dst)) == []
    copy_tree(src, tmp_path / "mine", owners=False)
    assert os.lstat(tmp_path / "mine/d/f").st_uid == os.getuid()


# ---------------------------------------------------------------------- overlay

@ROOT_ONLY
def test_overlay_ensure_builds_overlay_format_snapshots(store, tmp_path):
    l1, l2 = two_layers(store, tmp_path)
    snap = OverlaySnapshotter(tmp_path / "root", store)
    chain = (l1, l2)
    lowers = snap.lowers(chain)
    top = Path(lowers[0])
    assert lowers == [str(tmp_path / "root/so" / chain_id([l1.diff_id, l2.diff_id]).hex[:12] / "fs"),
                      str(tmp_path / "root/so" / chain_id([l1.diff_id]).hex[:12] / "fs")]
    wh = os.lstat(top / "a/f")
    assert stat.S_ISCHR(wh.st_mode) and wh.st_rdev == 0
    assert os.getxattr(top / "d", "user.overlay.opaque") == b"y"
    assert (top / "d/y").read_text() == "y" and not (top / "keep").exists()
    assert snap.lowers(chain) == lowers                    # idempotent
    assert not [p for p in (tmp_path / "root/so").iterdir() if p.name.startswith(".t")]
    assert snap.lowers(()) == [str(tmp_path / "root/so/empty/fs")]


@ROOT_ONLY
def test_concurrent_ensure_is_safe(store, tmp_path):
    l1, l2 = two_layers(store, tmp_path)
    errs: list[BaseException] = []

    def go() -> None:
        try:
            OverlaySnapshotter(tmp_path / "root", store).ensure((l1, l2))
        except BaseException as e:  # noqa: BLE001
            errs.append(e)
    ts = [threading.Thread(target=go) for _ in range(6)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errs
    names = sorted(p.name for p in (tmp_path / "root/so").iterdir() if p.is_dir())
    assert len(names) == 2 and not any(n.startswith(".t") for n in names)


@ROOT_ONLY
def test_deep_chain_is_flattened(store, tmp_path):
    empty = tmp_path / "e"
    empty.mkdir()
    chain: tuple[LayerRef, ...] = ()
    prev = empty
    for i in range(MAX_LOWERS + 5):
        cur = tmp_path / f"t{i}"
        copy_tree(prev, cur)
        (cur / f"f{i}").write_text(str(i))
        if i == 3:
            (cur / "f1").unlink()
        chain += (layer_from_trees(store, prev, cur),)
        prev = cur
    snap = OverlaySnapshotter(tmp_path / "root", store)
    lowers = snap.lowers(chain)
    assert len(lowers) <= MAX_LOWERS and len(":".join(lowers)) < 3500
    flat = Path(lowers[-1])
    assert flat.parent.name.startswith("f")
    assert sorted(p.name for p in flat.iterdir()) == sorted(f"f{i}" for i in range(32) if i != 1)


# ---------------------------------------------------------------------- native

@ROOT_ONLY
def test_native_snapshots_are_full_trees(store, tmp_path):
    l1, l2 = two_layers(store, tmp_path)
    snap = NativeSnapshotter(tmp_path / "root", store)
    tree = snap.ensure((l1, l2))
    assert sorted(str(p.relative_to(tree)) for p in tree.rglob("*")) == ["a", "a/g", "d", "d/y", "keep"]
    active = snap.prepare((l1, l2))
    (active.fs / "new").write_text("n")
    (active.fs / "keep").unlink()
    assert [(c.kind, c.path) for c in snap.changes(active)] == [("delete", "keep"), ("add", "new")]
    snap.commit(active, (l1, l2, l1))
    assert (tmp_path / "root/sn" / chain_id([l1.diff_id, l2.diff_id, l1.diff_id]).hex[:12] / "fs/new").exists()
    again = snap.prepare((l1, l2))
    snap.commit(again, (l1, l2, l1))                  # already there: the new one is dropped
    assert not again.tmp.exists()


# ---------------------------------------------------------------------- id mapping

def test_parse_subid_file():
    text = "other:100000:65536\nme:200000:1000\nme:300000:65536\n1234:400000:65536\n"
    r = parse_subid_file(text, name="me", uid=1)
    assert (r.start, r.count) == (300000, 65536)
    assert parse_subid_file(text, name="x", uid=1234).start == 400000
    assert parse_subid_file(text, name="nobody", uid=9) is None


def test_require_ids_message():
    require_ids(IdMap(size=65536, setgroups=True, user="u"), 0, 1000, what="x")
    with pytest.raises(IdMappingError, match="usermod --add-subuids 100000-165535 --add-subgids 100000-165535 u"):
        require_ids(IdMap(size=1, setgroups=False, user="u"), 0, 1000, what="USER app")


def test_clean_stale_removes_only_dead_owners(tmp_path):
    from builder.store.snapshot import clean_stale
    dead = 4_000_000          # above pid_max: never a live process
    for name in (f".t{dead}-x", f"{dead}-y", f".t{os.getpid()}-z", "abcdef012345"):
        (tmp_path / name / "fs").mkdir(parents=True)
    clean_stale(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".t{os.getpid()}-z", "abcdef012345"]
