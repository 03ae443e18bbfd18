"""Tests for builder.layer.tar on real trees, real tars and a real overlay mount."""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import zstandard

from builder.layer import compression
from builder.errors import IdMappingError, LayerError
from builder.layer.compression import open_uncompressed
from builder.layer.apply import apply_layer
from builder.layer.diff import overlay_changes, tree_changes
from builder.layer.tar import Change, write_layer

NONUTF8 = os.fsdecode(b"caf\xe9-\xff")
LONG = "d" * 120 + "/" + "f" * 140


def build_tree(root: Path) -> None:
    (root / "etc/app").mkdir(parents=True)
    (root / "empty").mkdir(mode=0o700)
    (root / "etc/app/conf").write_text("key=value\n")
    os.chmod(root / "etc/app/conf", 0o640)
    os.lchown(root / "etc/app/conf", 1000, 50)
    (root / "bin").mkdir()
    (root / "bin/tool").write_bytes(b"\x7fELF" + os.urandom(300_000))
    os.link(root / "bin/tool", root / "bin/tool-hard")
    (root / "bin/suid").write_text("s")
    os.chmod(root / "bin/suid", 0o4755)
    os.symlink("tool", root / "bin/current")
    os.symlink("/nowhere", root / "dangling")
    os.lchown(root / "dangling", 7, 8)
    os.mkfifo(root / "fifo")
    (root / NONUTF8).write_text("latin1 name")
    (root / LONG).parent.mkdir()
    (root / LONG).write_text("long name")
    os.setxattr(root / "etc/app/conf", "user.test", b"\x00\xffbin", follow_symlinks=False)
    for p in sorted(root.rglob("*"), reverse=True):
        os.utime(p, (1_600_000_000, 1_600_000_000), follow_symlinks=False)


def describe(root: Path) -> dict[str, tuple]:
    out: dict[str, tuple] = {}
    inodes: dict[int, str] = {}
    for p in sorted(root.rglob("*")):
        st = os.lstat(p)
        rel = os.fsdecode(os.fsencode(p)[len(os.fsencode(root)) + 1:])
        content: object = None
        if stat.S_ISREG(st.st_mode):
            content = hashlib.sha256(p.read_bytes()).hexdigest()
            if st.st_nlink > 1:
                content = (content, inodes.setdefault(st.st_ino, rel))
        elif stat.S_ISLNK(st.st_mode):
            content = os.readlink(p)
        try:
            xa = tuple(sorted((x, os.getxattr(p, x, follow_symlinks=False))
                              for x in os.listxattr(p, follow_symlinks=False)))
        except OSError:
            xa = ()
        mtime = st.st_mtime if not stat.S_ISLNK(st.st_mode) else None
        out[rel] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                    content, mtime, xa)
    return out


def all_adds(root: Path) -> list[Change]:
    empty = root.parent / (root.name + "-empty")
    empty.mkdir(exist_ok=True)
    return list(tree_changes(empty, root))


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    root.mkdir()
    build_tree(root)
    return root


@pytest.mark.parametrize("compression", ["uncompressed", "gzip", "zstd"])
def test_round_trip(tree: Path, tmp_path: Path, compression: str) -> None:
    sink = io.BytesIO()
    stats = write_layer(tree, all_adds(tree), sink, compression=compression)
    blob = sink.getvalue()
    assert stats.size == len(blob)
    assert str(stats.digest) == "sha256:" + hashlib.sha256(blob).hexdigest()
    tar_bytes = open_uncompressed(io.BytesIO(blob)).read()
    assert str(stats.diff_id) == "sha256:" + hashlib.sha256(tar_bytes).hexdigest()
    assert not stats.empty
    dest = tmp_path / "dest"
    dest.mkdir()
    apply_layer(open_uncompressed(io.BytesIO(blob)), dest, whiteouts="delete")
    assert describe(dest) == describe(tree)


def test_tar_format(tree: Path) -> None:
    sink = io.BytesIO()
    write_layer(tree, all_adds(tree), sink, compression="uncompressed")
    sink.seek(0)
    with tarfile.open(fileobj=sink, mode="r:", encoding="utf-8", errors="surrogateescape") as tf:
        members = tf.getmembers()
    names = [m.name for m in members]
    assert names == sorted(names, key=lambda n: os.fsencode(n).split(b"/"))
    byname = {m.name: m for m in members}
    assert byname["bin/tool-hard"].islnk() and byname["bin/tool-hard"].linkname == "bin/tool"
    assert all(m.uname == "" and m.gname == "" for m in members)
    assert byname["bin/suid"].mode == 0o4755
    assert byname[NONUTF8].isreg() and LONG in byname
    assert byname["etc/app/conf"].pax_headers["SCHILY.xattr.user.test"].encode(
        "utf-8", "surrogateescape") == b"\x00\xffbin"
    # parents are listed before children
    seen: set[str] = set()
    for n in names:
        parent = n.rpartition("/")[0]
        assert not parent or parent in seen
        seen.add(n)


def test_deterministic_and_pinned_headers(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    changes = all_adds(tree)
    for comp in ("uncompressed", "gzip", "zstd"):
        a, b = io.BytesIO(), io.BytesIO()
        sa = write_layer(tree, changes, a, compression=comp)
        sb = write_layer(tree, list(reversed(changes)), b, compression=comp)
        assert a.getvalue() == b.getvalue() and sa == sb
    g = io.BytesIO()
    write_layer(tree, changes, g, compression="gzip")
    head = g.getvalue()[:10]
    assert head[:2] == b"\x1f\x8b" and head[3] & 0x08 == 0 and head[4:8] == b"\0\0\0\0"
    # zstd output is the same for any worker-thread count >= 1
    outs = set()
    for threads in (1, 4):
        monkeypatch.setattr(compression, "ZSTD_THREADS", threads)
        z = io.BytesIO()
        write_layer(tree, changes, z, compression="zstd")
        outs.add(z.getvalue())
    assert len(outs) == 1


def test_source_date_epoch_clamps(tree: Path) -> None:
    sink = io.BytesIO()
    write_layer(tree, all_adds(tree), sink, compression="uncompressed", source_date_epoch=1000)
    sink.seek(0)
    with tarfile.open(fileobj=sink, mode="r:") as tf:
        assert {m.mtime for m in tf.getmembers()} == {1000}


def test_empty_layer(tmp_path: Path) -> None:
    sink = io.BytesIO()
    st = write_layer(tmp_path, [], sink, compression="gzip")
    assert st.empty and st.size == len(sink.getvalue())


def test_whiteouts_written_and_applied(tmp_path: Path) -> None:
    lower = tmp_path / "lower"
    (lower / "opq/old").mkdir(parents=True)
    (lower / "opq/old/f").write_text("old")
    (lower / "opq/keep-name").write_text("old")
    (lower / "gone.txt").write_text("x")
    (lower / "gonedir/sub").mkdir(parents=True)
    upper = tmp_path / "upper"
    (upper / "opq").mkdir(parents=True)
    (upper / "opq/-new").write_text("new")
    (upper / "opq/keep-name").write_text("new")
    changes = [Change(kind="delete", path="gone.txt"), Change(kind="delete", path="gonedir"),
               Change(kind="opaque", path="opq"), Change(kind="add", path="opq/-new"),
               Change(kind="add", path="opq/keep-name")]
    sink = io.BytesIO()
    write_layer(upper, changes, sink, compression="uncompressed")
    sink.seek(0)
    with tarfile.open(fileobj=sink, mode="r:") as tf:
        names = tf.getnames()
    assert names == [".wh.gone.txt", ".wh.gonedir", "opq", "opq/.wh..wh..opq", "opq/-new",
                     "opq/keep-name"]
    # delete mode: a full tree
    full = tmp_path / "full"
    shutil.copytree(lower, full, symlinks=True)
    sink.seek(0)
    apply_layer(sink, full, whiteouts="delete")
    assert sorted(str(p.relative_to(full)) for p in full.rglob("*")) == ["opq", "opq/-new", "opq/keep-name"]
    assert (full / "opq/keep-name").read_text() == "new"
    # overlay mode: whiteout devices and opaque xattr
    ov = tmp_path / "ov"
    ov.mkdir()
    sink.seek(0)
    apply_layer(sink, ov, whiteouts="overlay")
    for n in ("gone.txt", "gonedir"):
        st = os.lstat(ov / n)
        assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    assert os.getxattr(ov / "opq", "user.overlay.opaque") == b"y"
    assert list(overlay_changes(ov)) == changes[:3] + [Change(kind="add", path="opq")] + changes[3:]


def _tar(entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for ti, data in entries:
            if data is not None:
                ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data) if data is not None else None)
    buf.seek(0)
    return buf


def _ti(name: str, type_: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type, ti.linkname = type_, linkname
    return ti


def test_apply_refuses_dotdot(tmp_path: Path) -> None:
    with pytest.raises(LayerError):
        apply_layer(_tar([(_ti("a/../../evil"), b"x")]), tmp_path / "d", whiteouts="delete")
    assert not (tmp_path / "evil").exists()


def test_apply_symlink_escape_stays_inside(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    tar = _tar([(_ti("l1", tarfile.SYMTYPE, "../outside"), None),
                (_ti("l2", tarfile.SYMTYPE, str(outside)), None),
                (_ti("l1/a"), b"1"), (_ti("l2/b"), b"2"), (_ti("/abs/c"), b"3")])
    apply_layer(tar, dest, whiteouts="delete")
    assert list(outside.iterdir()) == []
    assert (dest / "outside/a").read_bytes() == b"1"
    assert (dest / str(outside).lstrip("/") / "b").read_bytes() == b"2"
    assert (dest / "abs/c").read_bytes() == b"3"


def test_apply_hardlink_outside_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("host secret")
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(LayerError):
        apply_layer(_tar([(_ti("h", tarfile.LNKTYPE, "../secret"), None)]), dest, whiteouts="delete")
    with pytest.raises(LayerError):
        apply_layer(_tar([(_ti("l", tarfile.SYMTYPE, str(tmp_path)), None),
                          (_ti("h", tarfile.LNKTYPE, "l/secret"), None)]), dest, whiteouts="delete")
    assert os.lstat(secret).st_nlink == 1


def test_apply_size_cap(tmp_path: Path) -> None:
    with pytest.raises(LayerError, match="limit"):
        apply_layer(_tar([(_ti("a"), b"x" * 600), (_ti("b"), b"y" * 600)]), tmp_path, whiteouts="delete",
                    max_bytes=1000)


def test_apply_replace_and_merge(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    (dest / "was-dir/child").mkdir(parents=True)
    (dest / "merge").mkdir()
    (dest / "merge/old").write_text("old")
    d = _ti("merge", tarfile.DIRTYPE)
    d.mode = 0o700
    apply_layer(_tar([(_ti("was-dir"), b"file now"), (d, None), (_ti("merge/new"), b"n")]), dest,
                whiteouts="delete")
    assert (dest / "was-dir").read_text() == "file now"
    assert sorted(os.listdir(dest / "merge")) == ["new", "old"]
    assert stat.S_IMODE(os.lstat(dest / "merge").st_mode) == 0o700


def test_open_uncompressed_detects(tmp_path: Path) -> None:
    data = b"hello world" * 1000
    for blob in (data, gzip.compress(data), zstandard.ZstdCompressor().compress(data)):
        assert open_uncompressed(io.BytesIO(blob)).read() == data


def test_tree_changes(tmp_path: Path) -> None:
    lower = tmp_path / "lower"
    lower.mkdir()
    build_tree(lower)
    (lower / "olddir/sub").mkdir(parents=True)
    (lower / "olddir/sub/f").write_text("x")
    (lower / "todir").mkdir()
    upper = tmp_path / "upper"
    subprocess.run(["cp", "-a", str(lower), str(upper)], check=True)   # what a copying snapshotter does
    assert list(tree_changes(lower, upper)) == []
    shutil.rmtree(upper / "olddir")
    (upper / "etc/app/new").write_text("n")
    os.chmod(upper / "bin/suid", 0o755)
    os.unlink(upper / "bin/current")
    os.symlink("tool-hard", upper / "bin/current")
    os.utime(upper / "bin/current", ns=(os.lstat(lower / "bin/current").st_mtime_ns,) * 2,
             follow_symlinks=False)
    os.link(upper / "etc/app/conf", upper / "conf-link")
    os.rmdir(upper / "todir")
    (upper / "todir").write_text("now a file")
    (upper / "newdir/x").mkdir(parents=True)
    os.utime(upper / "etc/app", (1_600_000_000, 1_600_000_000))
    os.utime(upper / "bin", (1_600_000_000, 1_600_000_000))
    got = [(c.kind, c.path) for c in tree_changes(lower, upper)]
    assert got == [("add", "bin/current"), ("add", "bin/suid"), ("add", "conf-link"),
                   ("add", "etc/app/conf"), ("add", "etc/app/new"),
                   ("add", "newdir"), ("add", "newdir/x"), ("delete", "olddir"), ("add", "todir")]


def test_whiteout_named_file_refused(tmp_path: Path) -> None:
    upper = tmp_path / "u"
    upper.mkdir()
    (upper / ".wh.sneaky").write_text("x")
    with pytest.raises(LayerError, match="reserved"):
        list(overlay_changes(upper))
    lower = tmp_path / "l"
    lower.mkdir()
    with pytest.raises(LayerError):
        list(tree_changes(lower, upper))


def _unshare_ok() -> bool:
    return shutil.which("unshare") is not None and subprocess.run(
        ["unshare", "--user", "--map-root-user", "true"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _unshare_ok(), reason="user namespaces unavailable")
def test_overlay_changes_real_mount(tmp_path: Path) -> None:
    lower, upper, work, merged = (tmp_path / n for n in ("L", "U", "W", "M"))
    for d in (lower, upper, work, merged):
        d.mkdir()
    (lower / "del.txt").write_text("x")
    (lower / "dir/old").mkdir(parents=True)
    (lower / "dir/old/f").write_text("x")
    (lower / "keep").mkdir()
    (lower / "keep/f").write_text("x")
    script = (f"mount -t overlay overlay -o lowerdir={lower},upperdir={upper},workdir={work},userxattr {merged}"
              f" && cd {merged} && rm del.txt && rm -r dir && mkdir dir && echo n > dir/new"
              f" && echo m > keep/f")
    subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script], check=True)
    got = [(c.kind, c.path) for c in overlay_changes(upper)]
    assert got == [("delete", "del.txt"), ("opaque", "dir"), ("add", "dir"), ("add", "dir/new"),
                   ("add", "keep"), ("add", "keep/f")]
    sink = io.BytesIO()
    write_layer(upper, overlay_changes(upper), sink, compression="gzip")
    full = tmp_path / "full"
    shutil.copytree(lower, full)
    apply_layer(open_uncompressed(io.BytesIO(sink.getvalue())), full, whiteouts="delete")
    assert sorted(str(p.relative_to(full)) for p in full.rglob("*")) == ["dir", "dir/new", "keep", "keep/f"]
    assert (full / "keep/f").read_text() == "m\n"


@pytest.mark.skipif(not _unshare_ok(), reason="user namespaces unavailable")
def test_unmapped_owner_raises_id_mapping_error(tmp_path: Path) -> None:
    tar = tmp_path / "l.tar"
    with tarfile.open(tar, "w") as tf:
        ti = tarfile.TarInfo("f")
        ti.uid = ti.gid = 1234
        tf.addfile(ti, io.BytesIO(b""))
    dest = tmp_path / "d"
    dest.mkdir()
    code = ("import sys; from pathlib import Path; from builder.layer.apply import apply_layer\n"
            "from builder.errors import IdMappingError\n"
            f"try:\n apply_layer(open({str(tar)!r}, 'rb'), Path({str(dest)!r}), whiteouts='delete')\n"
            "except IdMappingError as e:\n print('IDMAP', e); sys.exit(3)\n")
    r = subprocess.run(["unshare", "--user", "--map-root-user", sys.executable, "-c", code],
                       capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
    assert r.returncode == 3, r.stderr
    assert "usermod --add-subuids" in r.stdout
    assert IdMappingError.__mro__[1].__name__ == "SandboxError"


@pytest.mark.skipif(not _unshare_ok(), reason="user namespaces unavailable")
def test_device_nodes_skipped_in_user_namespace(tmp_path: Path) -> None:
    tar = tmp_path / "l.tar"
    with tarfile.open(tar, "w") as tf:
        for name, major, minor in (("null", 1, 3), ("wh", 0, 0)):
            ti = tarfile.TarInfo(name)
            ti.type, ti.devmajor, ti.devminor = tarfile.CHRTYPE, major, minor
            tf.addfile(ti)
        tf.addfile(tarfile.TarInfo("after"), io.BytesIO(b""))
    dest = tmp_path / "d"
    dest.mkdir()
    code = ("from pathlib import Path; from builder.layer.apply import apply_layer\n"
            f"apply_layer(open({str(tar)!r}, 'rb'), Path({str(dest)!r}), whiteouts='overlay')\n")
    subprocess.run(["unshare", "--user", "--map-root-user", sys.executable, "-c", code], check=True,
                   cwd=Path(__file__).resolve().parent.parent)
    assert sorted(os.listdir(dest)) == ["after", "wh"]
    assert os.lstat(dest / "wh").st_rdev == 0


def test_tree_changes_sees_new_content_behind_equal_metadata(tmp_path: Path) -> None:
    """COPY keeps source mtimes, and a coarse clock gives two writes one mtime: same size, mode,
    owner and mtime must not hide a content change (conformance-extra copy-stage-root-merge)."""
    import time as _t
    lower, upper = tmp_path / "l", tmp_path / "u"
    lower.mkdir()
    (lower / "same.txt").write_text("a\n")
    subprocess.run(["cp", "-a", str(lower), str(upper)], check=True)
    since = _t.time_ns()
    st = os.stat(lower / "same.txt")
    (upper / "same.txt").write_text("b\n")
    os.utime(upper / "same.txt", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert [c.path for c in tree_changes(lower, upper, since_ns=since)] == ["same.txt"]
    assert [c.path for c in tree_changes(lower, upper)] == ["same.txt"]
