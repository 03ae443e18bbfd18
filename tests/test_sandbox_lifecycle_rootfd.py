"""`RootDir`, the one walker the worker's post-step clean-ups use: no path through a symlink a
step planted (absolute, relative, or `..`) reaches a host file."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from builder.sandbox.rootfd import RootDir, Unreachable


def _host_tree(tmp: Path) -> tuple[Path, Path]:
    host = tmp / "host"
    (host / "b").mkdir(parents=True)
    (host / "f").write_bytes(b"")
    root = tmp / "root"
    (root / "real" / "b").mkdir(parents=True)
    (root / "real" / "f").write_bytes(b"")
    os.symlink(str(host), root / "abs")           # absolute: the host tree
    os.symlink("../host", root / "rel")           # relative, out of the root
    os.symlink("real", root / "inside")           # inside the root: still not followed
    return host, root


def _state(p: Path) -> list[tuple]:
    return sorted((str(q), os.lstat(q).st_mtime_ns) for q in [p, *p.rglob("*")])


@pytest.mark.parametrize("link", ["abs", "rel", "inside"])
def test_symlinked_parent_of_stub_never_reaches_host(tmp_path, link):
    host, root = _host_tree(tmp_path)
    before = _state(host)
    with RootDir(root) as fs:
        assert fs.lstat(f"{link}/b") is None and fs.lstat(f"{link}/f") is None
        for op in (lambda: fs.rmdir(f"{link}/b"), lambda: fs.unlink(f"{link}/f"),
                   lambda: fs.utime(f"{link}/b", (1, 1)), lambda: fs.listdir(link),
                   lambda: fs.link("real/f", f"{link}/g"), lambda: fs.mkdir(f"{link}/new", os.lstat(root))):
            with pytest.raises(FileNotFoundError):
                op()
        assert fs.getxattr(link, "user.x") is None
        fs.utime(link, (5, 5))                     # the link's own times, not its target's
        assert os.lstat(root / link).st_mtime_ns == 5
    assert _state(host) == before


def test_dotdot_is_refused_and_real_paths_work(tmp_path):
    host, root = _host_tree(tmp_path)
    with RootDir(root) as fs:
        with pytest.raises(Unreachable):
            fs.rmdir("real/../../host/b")
        fs.link("real/f", "real/b/g")
        assert os.path.samefile(root / "real/f", root / "real/b/g")
        fs.unlink("real/b/g")
        fs.rmdir("real/b")
        assert fs.listdir("real") == ["f"] and (host / "b").is_dir()
