"""Every step gets its own view (issue 6): a step that remounts its read-only binds read-write
(`mount -o remount,rw`, which CAP_SYS_ADMIN in the step's namespace allows until capabilities
are dropped) changes nothing a later step or a later build sees: not the stored snapshot of the
stage or image it bound (cache poisoning of `FROM busybox` itself, as BuildKit's
CVE-2024-23651-style mount races aim at), not `/etc/hosts` or `/etc/resolv.conf`. As root and as
the unprivileged CI user, with both snapshotters."""
from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from conftest import make_context

SNAPSHOTTERS = ["overlay", "native"]
USERS = ["root", "unpriv"]

# Tries every way to write through a read-only bind; never fails itself.
HOSTILE = ("for m in /m /b /etc/hosts /etc/resolv.conf; do mount -o remount,rw,bind $m; mount -o remount,rw $m; done; "
           "echo poisoned > /m/x-file; echo poisoned > /m/{mark}; echo poisoned > /b/etc/motd; "
           "echo poisoned > /b/{mark}; echo poisoned > /etc/hosts; echo poisoned > /etc/resolv.conf; "
           "cat /m/x-file; true")


def _build(pybuild, workdir: Path, user: str, unpriv_user: str, snapshotter: str,  # type: ignore[no-untyped-def]
           dockerfile: str):
    ctx = workdir / f"ctx-{uuid.uuid4().hex[:8]}"
    make_context(ctx, {"Dockerfile": dockerfile}, owner=unpriv_user if user != "root" else None)
    os.chmod(ctx, 0o755)
    return pybuild("build", str(ctx), "--progress", "plain", user=unpriv_user if user != "root" else None,
                   env={"PYBUILD_SNAPSHOTTER": snapshotter})


def _files_named(root: Path, name: str) -> list[Path]:
    return [Path(d) / name for d, dirs, files in os.walk(root) if name in files or name in dirs]


@pytest.mark.parametrize("snapshotter", SNAPSHOTTERS)
@pytest.mark.parametrize("user", USERS)
def test_bind_remounted_rw_poisons_no_snapshot_and_no_later_step(pybuild, workdir, base_image, unpriv_user,
                                                                  user, snapshotter):
    mark = f"pb-view-{uuid.uuid4().hex[:10]}"
    stage = f"FROM {base_image} AS x\nRUN echo original > /x-file\n"
    first = _build(pybuild, workdir, user, unpriv_user, snapshotter, stage + (
        f"FROM {base_image}\n"
        f"RUN --mount=type=bind,from=x,target=/m --mount=type=bind,from={base_image},target=/b "
        f"{HOSTILE.format(mark=mark)}\n"
        f"RUN --mount=type=bind,from=x,target=/m cat /m/x-file /etc/hosts /etc/resolv.conf; "
        f"ls /m/{mark} || echo clean-{mark}\n"))
    assert first.returncode == 0, first.stderr
    out = first.stderr
    assert "poisoned" not in out.split("cat /m/x-file /etc/hosts")[-1], out     # the later step
    assert f"clean-{mark}" in out
    # A later build on the same store: the stage's and the image's snapshots are as they were.
    later = _build(pybuild, workdir, user, unpriv_user, snapshotter, stage + (
        f"FROM x\nRUN cat /x-file /etc/motd; ls /{mark} || echo clean-{mark}\n"))
    assert later.returncode == 0, later.stderr
    assert "original" in later.stderr and f"clean-{mark}" in later.stderr
    assert "poisoned" not in later.stderr, later.stderr
    # On the host: nothing the hostile step wrote is anywhere in the store.
    assert _files_named(workdir / "root", mark) == []
    for p in _files_named(workdir / "root", "x-file"):
        assert p.read_bytes() == b"original\n", p


@pytest.mark.parametrize("snapshotter", SNAPSHOTTERS)
@pytest.mark.parametrize("user", USERS)
def test_writable_file_bind_and_cache_from_stage_change_no_snapshot(pybuild, workdir, base_image, unpriv_user,
                                                                    user, snapshotter):
    """A writable bind of one file of a stage (BuildKit: writes are thrown away) and a cache
    mount seeded `from=` the stage: what the step writes there never reaches the stage."""
    mark = f"pb-view-{uuid.uuid4().hex[:10]}"
    stage = f"FROM {base_image} AS x\nRUN mkdir /d && echo original > /d/x-file && echo original > /x-file\n"
    first = _build(pybuild, workdir, user, unpriv_user, snapshotter, stage + (
        f"FROM {base_image}\n"
        f"RUN --mount=type=bind,from=x,source=/x-file,target=/f,rw "
        f"--mount=type=cache,id={mark},from=x,source=/d,target=/c "
        f"echo poisoned > /f; echo poisoned > /c/x-file; cat /f\n"
        f"RUN --mount=type=bind,from=x,source=/x-file,target=/f cat /f\n"))
    assert first.returncode == 0, first.stderr
    assert "poisoned" not in first.stderr.split("target=/f cat /f")[-1], first.stderr
    later = _build(pybuild, workdir, user, unpriv_user, snapshotter, stage + "FROM x\nRUN cat /x-file /d/x-file\n")
    assert later.returncode == 0 and "poisoned" not in later.stderr, later.stderr
    for p in _files_named(workdir / "root", "x-file"):
        if "cache-mounts" not in str(p):
            assert p.read_bytes() == b"original\n", p


def test_copying_snapshotter_without_overlay_views_gets_a_private_copy(tmp_path):
    """Where no overlay can be mounted over the stored tree (here: a root path with ':', which
    overlay options cannot carry), a read-only bind from a stage is a private copy: a step that
    remounts it read-write and writes changes nothing stored."""
    import test_sandbox as ts
    from builder.image.view import ChainSource
    from builder.sandbox.client import SandboxOptions, Worker
    from builder.solve.ops import Mount
    from builder.store.content import ContentStore

    if ts.BUSYBOX is None:
        pytest.fail("busybox-static is not installed")
    store = ContentStore(tmp_path / "store")
    base = (ts.make_base(store, tmp_path),)
    with Worker(store, SandboxOptions(root=tmp_path / "ro:ot", snapshotter="auto")) as w:
        assert w.snapshotter_name == "native"
        x, _ = ts.run(w, base, ts.sh("echo original > /x-file"))
        mounts = (Mount(type="bind", target="/m", input=1, readonly=True),)
        _, out = ts.run(w, base, ts.sh("mount -o remount,rw,bind /m; echo poisoned > /m/x-file; "
                                       "echo poisoned > /m/etc/motd; cat /m/x-file; true", mounts=mounts),
                        mount_sources={1: ChainSource(chain=base + (x,))})
        # Without CAP_SYS_ADMIN the remount itself is refused now; were it allowed, the write
        # would land in the step's own copy: either way nothing stored changes (checked below).
        assert "original" in out
        _, out = ts.run(w, base, ts.sh("cat /m/x-file /m/etc/motd", mounts=mounts),
                        mount_sources={1: ChainSource(chain=base + (x,))})
        assert out == "original\nhello\n"
    for p in _files_named(tmp_path / "ro:ot", "x-file") + _files_named(tmp_path / "ro:ot", "motd"):
        assert b"poisoned" not in p.read_bytes(), p


# ---------------------------------------------------------------------- post-step clean-up

def _sentinel(top: Path, owner: str | None) -> Path:
    """A host tree shaped like what the worker touches after a step: empty dirs `b/c` (a stub
    path below a planted `a`), empty files `hosts`, `resolv.conf` (stubs below a planted `etc`)
    and a hard-link group's names."""
    s = top / f"sentinel-{uuid.uuid4().hex[:8]}"
    (s / "b" / "c").mkdir(parents=True)
    (s / "hosts").write_bytes(b"")
    (s / "resolv.conf").write_bytes(b"")
    (s / "keep").write_text("host data\n")
    if owner:
        import shutil
        for p in [s, *s.rglob("*")]:
            shutil.chown(p, owner, owner)
    return s


def _snapshot_tree(root: Path) -> dict[str, tuple]:
    out = {}
    for p in [root, *root.rglob("*")]:
        st = os.lstat(p)
        out[str(p.relative_to(root))] = (st.st_mode, st.st_uid, st.st_nlink, st.st_size, st.st_mtime_ns,
                                         p.read_bytes() if p.is_file() else None)
    return out


@pytest.mark.parametrize("snapshotter", SNAPSHOTTERS)
@pytest.mark.parametrize("user", USERS)
def test_symlinks_planted_at_stub_and_hardlink_parents_leave_host_unchanged(pybuild, workdir, base_image,
                                                                           unpriv_user, user, snapshotter):
    """The step replaces the parents of its mount-point stubs (`/a` of a tmpfs at /a/b/c, `/etc`
    of the /etc/hosts and resolv.conf stubs) and of a copied-up hard link's other name with
    symlinks to a host tree; the worker's clean-up after the step must not touch that tree."""
    sent = _sentinel(workdir, unpriv_user if user != "root" else None)
    before = _snapshot_tree(sent)
    hostile = (f"mv /a /a2 && ln -s {sent} /a; mv /etc /etc2 && ln -s {sent} /etc; "
               f"echo more >> /h/one; mv /g /g2 && ln -s {sent} /g; true")
    r = _build(pybuild, workdir, user, unpriv_user, snapshotter, (
        f"FROM {base_image}\n"
        "RUN rm -f /etc/hosts /etc/resolv.conf; mkdir /h /g && echo data > /h/one && ln /h/one /g/one\n"
        f"RUN --mount=type=tmpfs,target=/a/b/c {hostile}\n"))
    assert r.returncode == 0, r.stderr
    assert _snapshot_tree(sent) == before
