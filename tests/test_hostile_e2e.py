"""Hostile base images through the whole build (the CLI, the namespace worker, both snapshotters,
as root and as the unprivileged CI user): a base layer that abuses whiteouts (`.wh...`) after
writing through a symlink to a host directory is refused with an error naming the layer, a base
layer that declares a decompression bomb is refused at once, and nothing outside the store and
the output changes (a sentinel tree); a legitimate layer that writes through a lower layer's
symlink gives the same tree with both snapshotters."""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from conftest import make_context


def _sha(b: bytes) -> str:
    return "sha256:" + hashlib.sha256(b).hexdigest()


def _tar(entries: list[tuple[str, bytes, str | bytes]]) -> bytes:
    """(name, type, data or link target) entries, root-owned."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, type_, data in entries:
            ti = tarfile.TarInfo(name)
            ti.type, ti.mode, ti.mtime = type_, 0o755 if type_ == tarfile.DIRTYPE else 0o644, 1_600_000_000
            if type_ == tarfile.SYMTYPE:
                ti.linkname = str(data)
                tf.addfile(ti)
            elif type_ == tarfile.REGTYPE:
                assert isinstance(data, bytes)
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
            else:
                tf.addfile(ti)
    return buf.getvalue()


def layout_with_layers(base: Path, dest: Path, tars: list[bytes]) -> Path:
    """A copy of OCI layout `base` (tag latest) whose image has `tars` appended as gzip layers."""
    shutil.copytree(base, dest)
    blobs = dest / "blobs/sha256"
    idx = json.loads((base / "index.json").read_text())
    man = json.loads((blobs / idx["manifests"][0]["digest"].split(":")[1]).read_text())
    cfg = json.loads((blobs / man["config"]["digest"].split(":")[1]).read_text())

    def put(data: bytes) -> str:
        d = _sha(data)
        (blobs / d.split(":")[1]).write_bytes(data)
        return d
    for raw in tars:
        blob = gzip.compress(raw, mtime=0)
        man["layers"].append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                              "digest": put(blob), "size": len(blob)})
        cfg["rootfs"]["diff_ids"].append(_sha(raw))
        cfg.setdefault("history", []).append({"created_by": "hostile layer"})
    cfg_raw = json.dumps(cfg).encode()
    man["config"] = {**man["config"], "digest": put(cfg_raw), "size": len(cfg_raw)}
    man_raw = json.dumps(man).encode()
    entry = {**idx["manifests"][0], "digest": put(man_raw), "size": len(man_raw)}
    (dest / "index.json").write_text(json.dumps({**idx, "manifests": [entry]}))
    subprocess.run(["chmod", "-R", "a+rX", str(dest)], check=True)
    return dest


def tree_state(top: Path) -> list[tuple]:
    out = []
    for d, dirs, files in os.walk(top):
        for n in sorted(dirs + files):
            st = os.lstat(os.path.join(d, n))
            out.append((os.path.relpath(os.path.join(d, n), top), st.st_mode, st.st_size, st.st_mtime_ns))
    return sorted(out)


@pytest.fixture
def sentinel(workdir: Path):
    s = workdir / "host-sentinel"
    (s / "sub").mkdir(parents=True)
    (s / "f").write_text("host")
    os.chmod(s, 0o777)
    before = tree_state(s)
    yield s
    assert tree_state(s) == before, "the sentinel tree outside the store changed"


RUNS = [pytest.param(None, "overlay", id="root-overlay"), pytest.param(None, "native", id="root-native"),
        pytest.param("unpriv", "overlay", id="unpriv-overlay"), pytest.param("unpriv", "native", id="unpriv-native")]


def _build(pybuild, workdir, layout, user, snap, request, name):
    u = request.getfixturevalue("unpriv_user") if user else None
    ctx = make_context(workdir / f"ctx-{name}", {"Dockerfile": "FROM base\nRUN cat /usr/lib/new > /out.txt\n"},
                       owner=u)
    out = workdir / f"out-{name}"
    root = workdir / f"root-{name}"
    r = pybuild("build", str(ctx), "--build-context", f"base=oci-layout://{layout}:latest",
                "-o", f"type=local,dest={out}", user=u, root=root, env={"PYBUILD_SNAPSHOTTER": snap})
    return r, out, root


@pytest.mark.parametrize("user,snap", RUNS)
def test_whiteout_abuse_base_layer_refused_end_to_end(pybuild, workdir, base_layout, sentinel, request, user, snap):
    evil = _tar([("l", tarfile.SYMTYPE, str(sentinel)), ("l/f", tarfile.REGTYPE, b"pwned"),
                 (str(sentinel / "sub/g"), tarfile.REGTYPE, b"abs"), (".wh...", tarfile.REGTYPE, b"")])
    layout = layout_with_layers(base_layout, workdir / "lay-wh", [evil])
    r, out, root = _build(pybuild, workdir, layout, user, snap, request, "wh")
    assert r.returncode != 0
    assert "names no file" in r.stderr and "layer sha256:" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert not out.exists() or not (out / "out.txt").exists()
    left = [p for d in ("so", "sn") if (root / d).is_dir() for p in (root / d).iterdir() if p.name.startswith(".t")]
    assert left == []


@pytest.mark.parametrize("user,snap", RUNS[:1] + RUNS[3:])
def test_decompression_bomb_base_layer_refused_end_to_end(pybuild, workdir, base_layout, sentinel, request, user, snap):
    head = tarfile.TarInfo("bomb")
    head.size = 1 << 40                         # declares a terabyte of zeros
    bomb = head.tobuf(tarfile.PAX_FORMAT) + bytes(1 << 20)
    layout = layout_with_layers(base_layout, workdir / "lay-bomb", [bomb])
    r, out, root = _build(pybuild, workdir, layout, user, snap, request, "bomb")
    assert r.returncode != 0
    assert "expands beyond" in r.stderr and "'bomb'" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("user,snap", RUNS)
def test_child_of_lower_symlink_same_tree_end_to_end(pybuild, workdir, base_layout, sentinel, request, user, snap):
    lower = _tar([("usr", tarfile.DIRTYPE, b""), ("usr/lib", tarfile.DIRTYPE, b""), ("usr/lib/a", tarfile.REGTYPE, b"a"),
                  ("lib2", tarfile.SYMTYPE, "/usr/lib")])
    upper = _tar([("lib2/new", tarfile.REGTYPE, b"new through a lower symlink\n")])
    layout = layout_with_layers(base_layout, workdir / "lay-ok", [lower, upper])
    r, out, _ = _build(pybuild, workdir, layout, user, snap, request, "ok")
    assert r.returncode == 0, r.stderr
    assert (out / "out.txt").read_text() == "new through a lower symlink\n"
    assert os.readlink(out / "lib2") == "/usr/lib" and (out / "usr/lib/a").read_text() == "a"
