"""Layers from a registry are hostile input (the tar-slip family, whiteout abuse, device nodes,
duplicate entries): each attack is resolved inside the root or refused, and a sentinel tree
outside the root is unchanged. The legitimate cases that reach through a lower layer (a child of
a lower symlink, a hard link to a lower file, an opaque marker or a whiteout reached through a
symlink) give the same tree with the overlay and the copying snapshotter, the tree a full
extraction (containerd) gives."""
from __future__ import annotations

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

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from builder.errors import LayerError  # noqa: E402
from builder.image.digest import Digest  # noqa: E402
from builder.image.oci import Descriptor, MediaType  # noqa: E402
from builder.image.view import LayerRef  # noqa: E402
from builder.layer.apply import apply_layer  # noqa: E402
from builder.store.content import ContentStore  # noqa: E402
from builder.store.snapshot import NativeSnapshotter, OverlaySnapshotter  # noqa: E402

MODES = ["delete", "overlay"]


def _ti(name: str, type_: bytes = tarfile.REGTYPE, linkname: str = "", *, mode: int = 0o644,
        dev: tuple[int, int] = (0, 0), pax: dict[str, str] | None = None) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type, ti.linkname, ti.mode, ti.mtime = type_, linkname, mode, 1_600_000_000
    ti.devmajor, ti.devminor = dev
    if pax:
        ti.pax_headers = dict(pax)
    if type_ == tarfile.DIRTYPE:
        ti.mode = 0o755
    return ti


def tar_bytes(entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for ti, data in entries:
            if data is not None:
                ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def state(top: Path) -> dict[str, tuple]:
    """Everything about a tree that an attack could change (types, modes, contents, targets,
    mtimes, inodes' link counts)."""
    out: dict[str, tuple] = {}
    for dirpath, dirs, files in os.walk(top):
        for n in sorted(dirs + files):
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            data = None
            if stat.S_ISREG(st.st_mode):
                data = hashlib.sha256(Path(p).read_bytes()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                data = os.readlink(p)
            out[os.path.relpath(p, top)] = (st.st_mode, st.st_nlink, st.st_size, st.st_mtime_ns, data)
    return out


@pytest.fixture
def host(tmp_path: Path):
    """(root being built, sentinel dir outside it): the sentinel must never change."""
    sentinel = tmp_path / "host"
    (sentinel / "sub").mkdir(parents=True)
    (sentinel / "f").write_text("host file")
    (sentinel / "sub/g").write_text("host g")
    root = tmp_path / "a" / "root"
    root.mkdir(parents=True)
    before = state(tmp_path / "host"), state(tmp_path)
    yield root, sentinel
    assert state(tmp_path / "host") == before[0], "the sentinel tree outside the root changed"
    assert not (tmp_path / "f").exists() and not (tmp_path / "a" / "f").exists()
    assert (tmp_path / "a" / "root").is_dir()


def apply(root: Path, entries: list, mode: str) -> None:
    apply_layer(io.BytesIO(tar_bytes(entries)), root, whiteouts=mode)  # type: ignore[arg-type]


# ---------------------------------------------------------------------- the tar-slip family

@pytest.mark.parametrize("mode", MODES)
def test_tar_slip_absolute_path_lands_inside_root(host, mode):
    root, sentinel = host
    apply(root, [(_ti(str(sentinel / "f")), b"evil"), (_ti("/etc/x"), b"x")], mode)
    assert (root / str(sentinel).lstrip("/") / "f").read_bytes() == b"evil"
    assert (root / "etc/x").read_bytes() == b"x"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", ["../../host/f", "a/../../../host/f", "./../host/sub/g"])
def test_tar_slip_dotdot_refused(host, mode, name):
    root, _ = host
    with pytest.raises(LayerError, match="climbs out"):
        apply(root, [(_ti(name), b"evil")], mode)


@pytest.mark.parametrize("mode", MODES)
def test_tar_slip_symlink_then_write_through_it(host, mode):
    """A symlink to a host directory, then a file under it (CVE-2018-15664 style): the link is
    followed inside the root only."""
    root, sentinel = host
    apply(root, [(_ti("abs", tarfile.SYMTYPE, str(sentinel)), None),
                 (_ti("rel", tarfile.SYMTYPE, "../../../host"), None),
                 (_ti("abs/f"), b"via abs"), (_ti("rel/sub/g"), b"via rel")], mode)
    assert (root / str(sentinel).lstrip("/") / "f").read_bytes() == b"via abs"
    assert (root / "host/sub/g").read_bytes() == b"via rel"
    assert os.readlink(root / "abs") == str(sentinel)


@pytest.mark.parametrize("mode", MODES)
def test_tar_slip_symlink_then_same_name_file_replaces_link(host, mode):
    root, sentinel = host
    apply(root, [(_ti("x", tarfile.SYMTYPE, str(sentinel / "f")), None), (_ti("x"), b"file")], mode)
    assert not (root / "x").is_symlink() and (root / "x").read_bytes() == b"file"


@pytest.mark.parametrize("mode", MODES)
def test_tar_slip_symlink_parent_loop_refused(host, mode):
    root, _ = host
    with pytest.raises(LayerError, match="symbolic links"):
        apply(root, [(_ti("a", tarfile.SYMTYPE, "b"), None), (_ti("b", tarfile.SYMTYPE, "a"), None),
                     (_ti("a/f"), b"x")], mode)


@pytest.mark.parametrize("mode", MODES)
def test_hardlink_out_of_root_refused(host, mode):
    root, sentinel = host
    with pytest.raises(LayerError):
        apply(root, [(_ti("h", tarfile.LNKTYPE, "../../host/f"), None)], mode)
    with pytest.raises(LayerError, match="missing"):
        apply(root, [(_ti("l", tarfile.SYMTYPE, str(sentinel)), None),
                     (_ti("h", tarfile.LNKTYPE, "l/f"), None)], mode)
    with pytest.raises(LayerError, match="missing"):
        apply(root, [(_ti("h2", tarfile.LNKTYPE, str(sentinel / "f")), None)], mode)
    assert os.lstat(sentinel / "f").st_nlink == 1


@pytest.mark.parametrize("mode", MODES)
def test_hardlink_to_a_symlink_links_the_link_not_its_target(host, mode):
    """A hard link whose target is a symlink to a host file is the symlink itself (never the
    host file); writing to the name afterwards replaces it."""
    root, sentinel = host
    apply(root, [(_ti("s", tarfile.SYMTYPE, str(sentinel / "f")), None), (_ti("h", tarfile.LNKTYPE, "s"), None)], mode)
    assert os.readlink(root / "h") == str(sentinel / "f")
    assert os.lstat(root / "h").st_ino == os.lstat(root / "s").st_ino
    apply(root, [(_ti("h"), b"overwritten")], mode)
    assert (root / "h").read_bytes() == b"overwritten"


@pytest.mark.parametrize("mode", MODES)
def test_hardlink_to_directory_or_root_refused(host, mode):
    root, _ = host
    with pytest.raises(LayerError, match="directory"):
        apply(root, [(_ti("d", tarfile.DIRTYPE), None), (_ti("h", tarfile.LNKTYPE, "d"), None)], mode)
    with pytest.raises(LayerError, match="root"):
        apply(root, [(_ti("h", tarfile.LNKTYPE, "/"), None)], mode)


# ---------------------------------------------------------------------- whiteout abuse

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", [".wh..", ".wh...", ".wh.", "d/.wh..", "d/.wh...", "d/.wh."])
def test_whiteout_abuse_dot_names_refused(host, mode, name):
    """`.wh..` / `.wh...` would delete their own directory or its parent (the rootfs itself)."""
    root, _ = host
    apply(root, [(_ti("d", tarfile.DIRTYPE), None), (_ti("d/keep"), b"k")], "delete")
    with pytest.raises(LayerError, match="names no file"):
        apply(root, [(_ti(name), b"")], mode)
    assert (root / "d/keep").read_bytes() == b"k"


@pytest.mark.parametrize("mode", MODES)
def test_whiteout_abuse_through_symlink_stays_in_root(host, mode):
    root, sentinel = host
    apply(root, [(_ti("l", tarfile.SYMTYPE, str(sentinel)), None),
                 (_ti("r", tarfile.SYMTYPE, "../../../host/sub"), None)], mode)
    apply(root, [(_ti("l/.wh.f"), b""), (_ti("r/.wh..wh..opq"), b""), (_ti("l/.wh.sub"), b"")], mode)
    assert os.readlink(root / "l") == str(sentinel)


@pytest.mark.parametrize("mode", MODES)
def test_whiteout_abuse_aufs_metadata_ignored(host, mode):
    root, _ = host
    apply(root, [(_ti("keep"), b"k"), (_ti(".wh..wh.plnk", tarfile.DIRTYPE), None), (_ti(".wh..wh.keep"), b"")], mode)
    assert sorted(os.listdir(root)) == ["keep"]


@pytest.mark.parametrize("mode", MODES)
def test_layer_cannot_plant_overlay_xattrs(host, mode):
    """`user.overlay.*` / `trusted.overlay.*` xattrs in a layer would make overlayfs hide lower
    files (opaque) or redirect lookups: never written."""
    root, _ = host
    pax = {"SCHILY.xattr.user.overlay.opaque": "y", "SCHILY.xattr.user.overlay.redirect": "/etc",
           "SCHILY.xattr.trusted.overlay.opaque": "y", "SCHILY.xattr.user.ok": "v"}
    apply(root, [(_ti("d", tarfile.DIRTYPE, pax=pax), None)], mode)
    names = os.listxattr(root / "d", follow_symlinks=False)
    assert not [n for n in names if ".overlay." in n]
    assert "user.ok" in names


# ---------------------------------------------------------------------- devices, duplicates, malformed

@pytest.mark.parametrize("mode", MODES)
def test_device_nodes_are_never_created(host, mode):
    """Block and char devices from a layer are skipped (as containerd does in a user namespace),
    even when the applier could create them (root); a char 0/0 (a whiteout) stays."""
    root, _ = host
    apply(root, [(_ti("sda", tarfile.BLKTYPE, dev=(8, 0)), None), (_ti("mem", tarfile.CHRTYPE, dev=(1, 1)), None),
                 (_ti("wh", tarfile.CHRTYPE, dev=(0, 0)), None), (_ti("after"), b"")], mode)
    assert sorted(os.listdir(root)) == ["after", "wh"]


@pytest.mark.parametrize("mode", MODES)
def test_duplicate_entries_the_last_one_wins(host, mode):
    root, sentinel = host
    apply(root, [(_ti("f"), b"1"), (_ti("f"), b"2"), (_ti("d", tarfile.DIRTYPE), None), (_ti("d/x"), b"x"),
                 (_ti("d"), b"now a file"), (_ti("l", tarfile.SYMTYPE, str(sentinel)), None),
                 (_ti("l", tarfile.DIRTYPE), None), (_ti("l/f"), b"inside")], mode)
    assert (root / "f").read_bytes() == b"2" and (root / "d").read_bytes() == b"now a file"
    assert (root / "l").is_dir() and not (root / "l").is_symlink()
    assert (root / "l/f").read_bytes() == b"inside"


@pytest.mark.parametrize("mode", MODES)
def test_path_deeper_than_path_max_is_a_layer_error(host, mode):
    root, _ = host
    with pytest.raises(LayerError, match="entry"):
        apply(root, [(_ti("/".join(["d" * 200] * 30) + "/f"), b"x")], mode)


@pytest.mark.parametrize("mode", MODES)
def test_entry_after_a_replaced_symlink_resolves_anew(host, mode):
    """Names under a symlink that an entry then replaces by a directory resolve to the new
    directory (the applier's memo of directories is dropped)."""
    root, _ = host
    apply(root, [(_ti("t", tarfile.DIRTYPE), None), (_ti("l", tarfile.SYMTYPE, "t"), None),
                 (_ti("l/sub", tarfile.DIRTYPE), None), (_ti("l/sub/x"), b"x"), (_ti("l", tarfile.DIRTYPE), None),
                 (_ti("l/sub/y"), b"y"), (_ti("t/sub", tarfile.DIRTYPE), None),
                 (_ti(".wh.t"), b""), (_ti("t", tarfile.DIRTYPE), None), (_ti("t/sub/z"), b"z")], mode)
    assert sorted(os.listdir(root / "l/sub")) == ["y"]
    assert sorted(os.listdir(root / "t/sub")) == ["z"]


@pytest.mark.parametrize("mode", MODES)
def test_deep_nesting_is_linear_and_capped(host, mode):
    """A chain of directories is applied in time linear in its depth (no walk of the whole path
    per entry); names deeper than MAX_DEPTH are refused (their walk would cost depth squared)."""
    import time
    from builder.layer.apply import MAX_DEPTH
    root, _ = host
    entries = [(_ti("/".join(["d"] * k), tarfile.DIRTYPE), None) for k in range(1, MAX_DEPTH)]
    entries += [(_ti("/".join(["d"] * (MAX_DEPTH - 1)) + f"/f{i}"), b"") for i in range(2000)]
    t0 = time.monotonic()
    apply(root, entries, mode)
    assert time.monotonic() - t0 < 10
    with pytest.raises(LayerError, match="deep"):
        apply(root, [(_ti("/".join(["d"] * (MAX_DEPTH + 1))), b"")], mode)


def test_malformed_stream_is_a_layer_error(host):
    root, _ = host
    raw = tar_bytes([(_ti("f"), b"x" * 5000)])
    with pytest.raises(LayerError):
        apply_layer(io.BytesIO(raw[:1500]), root, whiteouts="delete")
    with pytest.raises(LayerError):
        apply_layer(io.BytesIO(b"\x1f\x8b" + b"garbage" * 100), root, whiteouts="delete")


# ---------------------------------------------------------------------- same tree, both snapshotters

def put_layer(store: ContentStore, entries: list) -> LayerRef:
    raw = tar_bytes(entries)
    d, size = store.put_bytes(raw)
    return LayerRef(descriptor=Descriptor(media_type=MediaType.oci_layer("uncompressed"), digest=d, size=size),
                    diff_id=Digest.of_bytes(raw))


LOWER = [(_ti("usr", tarfile.DIRTYPE), None), (_ti("usr/lib", tarfile.DIRTYPE), None),
         (_ti("usr/lib/a"), b"a"), (_ti("usr/lib/b"), b"b"), (_ti("usr/share", tarfile.DIRTYPE), None),
         (_ti("usr/share/old"), b"old"), (_ti("lib", tarfile.SYMTYPE, "usr/lib"), None),
         (_ti("share", tarfile.SYMTYPE, "/usr/share"), None), (_ti("etc", tarfile.DIRTYPE), None),
         (_ti("etc/conf"), b"conf")]

UPPERS = {
    "child-of-lower-symlink": [(_ti("lib/new"), b"new"), (_ti("lib/sub/deep"), b"deep")],
    "hardlink-to-lower-file": [(_ti("etc/conf-link", tarfile.LNKTYPE, "etc/conf"), None),
                               (_ti("etc/via-symlink", tarfile.LNKTYPE, "lib/a"), None)],
    "opaque-through-symlink": [(_ti("share/.wh..wh..opq"), b""), (_ti("share/fresh"), b"fresh")],
    "whiteout-through-symlink": [(_ti("lib/.wh.a"), b"")],
    "dir-replaces-lower-symlink": [(_ti("lib/x"), b"x"), (_ti("lib/sub/x"), b"x"), (_ti("lib", tarfile.DIRTYPE), None),
                                   (_ti("lib/sub", tarfile.DIRTYPE), None), (_ti("lib/sub/y"), b"y")],
    "whiteout-then-recreate": [(_ti("usr/.wh.lib"), b""), (_ti("usr/lib", tarfile.DIRTYPE), None),
                               (_ti("usr/lib/only"), b"only")],
}

EXPECT = {
    "child-of-lower-symlink": {"usr/lib/new": b"new", "usr/lib/sub/deep": b"deep", "usr/lib/a": b"a"},
    "hardlink-to-lower-file": {"etc/conf-link": b"conf", "etc/via-symlink": b"a", "etc/conf": b"conf"},
    "opaque-through-symlink": {"usr/share/fresh": b"fresh"},
    "whiteout-through-symlink": {"usr/lib/b": b"b"},
    "whiteout-then-recreate": {"usr/lib/only": b"only"},
    "dir-replaces-lower-symlink": {"usr/lib/x": b"x", "usr/lib/sub/x": b"x", "lib/sub/y": b"y"},
}
ABSENT = {"child-of-lower-symlink": [], "hardlink-to-lower-file": [], "opaque-through-symlink":
          ["usr/share/old"], "whiteout-through-symlink": ["usr/lib/a"], "whiteout-then-recreate": ["usr/lib/a"],
          "dir-replaces-lower-symlink": ["usr/lib/sub/y", "lib/x", "lib/sub/x"]}

_LIST = r"""
import hashlib, json, os, stat, sys
top = sys.argv[1]
out = {}
for d, dirs, files in os.walk(top):
    for n in dirs + files:
        p = os.path.join(d, n); st = os.lstat(p); rel = os.path.relpath(p, top)
        data = hashlib.sha256(open(p, 'rb').read()).hexdigest() if stat.S_ISREG(st.st_mode) else (
            os.readlink(p) if stat.S_ISLNK(st.st_mode) else None)
        out[rel] = [stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), data, st.st_nlink if not stat.S_ISDIR(st.st_mode) else 0]
print(json.dumps(out, sort_keys=True))
"""


def merged_listing(lowers: list[str], tmp: Path) -> str:
    """The tree the kernel's overlayfs shows for `lowers` (mounted in a user namespace)."""
    m = tmp / "merged"
    m.mkdir()
    opts = "lowerdir=" + ":".join(lowers + ([lowers[0]] if len(lowers) == 1 else [])) + ",userxattr"
    script = f'mount -t overlay overlay -o {opts} {m} && exec "$0" -c "$1" {m}'
    r = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script,
                        sys.executable, _LIST], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r.stdout


def native_listing(tree: Path) -> str:
    r = subprocess.run([sys.executable, "-c", _LIST, str(tree)], capture_output=True, text=True, check=True)
    return r.stdout


@pytest.mark.parametrize("case", sorted(UPPERS))
def test_lower_layer_cases_same_tree_with_both_snapshotters(tmp_path, case):
    if shutil.which("unshare") is None:
        pytest.fail("util-linux unshare is needed to mount the overlay snapshot")
    store = ContentStore(tmp_path / "store")
    chain = (put_layer(store, LOWER), put_layer(store, UPPERS[case]))
    tree = NativeSnapshotter(tmp_path / "root", store).ensure(chain)
    for rel, data in EXPECT[case].items():
        assert (tree / rel).read_bytes() == data, rel
    for rel in ABSENT[case]:
        assert not os.path.lexists(tree / rel), rel
    assert os.readlink(tree / "share") == "/usr/share"
    assert (tree / "lib").is_symlink() == (case != "dir-replaces-lower-symlink")
    lowers = OverlaySnapshotter(tmp_path / "root", store).lowers(chain)
    assert len(lowers) == 2
    assert merged_listing(lowers, tmp_path) == native_listing(tree)
