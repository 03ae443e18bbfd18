"""Tests for builder.sandbox.fileop: BuildKit copy semantics on real directories.

The conformance replay builds a small root with the busybox base image's /etc/passwd and
/etc/group, runs each case's COPY/ADD lines (parsed here with a tiny parser, the real frontend is
not under test) through apply_file_op, and compares the result with BuildKit's expected.json.
"""
from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import stat
import tarfile
from pathlib import Path

import pytest

from builder.solve import ops
from builder.errors import SourceError
from builder.sandbox.fileop import SourceDir, apply_file_op, resolve_chown, resolve_sources
from frontend.dockerignore import parse_dockerignore

REPO = Path(__file__).resolve().parent.parent


def _shared_dir() -> Path:
    """The shared data: $PYBUILD_SHARED, else ../shared beside the checkout."""
    env = os.environ.get("PYBUILD_SHARED")
    return Path(env) if env else REPO.parent / "shared"


CASES = _shared_dir() / "conformance" / "cases"


def known_failures() -> dict[str, str]:
    """tests/conformance-known-failures.txt: case name -> reason (one `NAME reason` a line)."""
    out: dict[str, str] = {}
    for line in (REPO / "tests" / "conformance-known-failures.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, reason = line.strip().partition(" ")
            out[name] = reason.strip()
    return out

PASSWD = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n" \
         "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
GROUP = "root:x:0:\nstaff:x:50:app\napp:x:1000:\nnogroup:x:65534:\n"


def make_root(tmp: Path) -> Path:
    root = tmp / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/passwd").write_text(PASSWD)
    (root / "etc/group").write_text(GROUP)
    (root / "tmp").mkdir(mode=0o1777)
    os.chmod(root / "tmp", 0o1777)
    return root


def snapshot(root: Path) -> dict[str, list]:
    """Same normalised form as the conformance harness: path -> [type, mode, uid, gid, size, content]."""
    out: dict[str, list] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            st = os.lstat(p)
            rel = "/" + str(p.relative_to(root))
            m = st.st_mode
            if stat.S_ISDIR(m):
                e = ["dir", f"{stat.S_IMODE(m):04o}", st.st_uid, st.st_gid, 0, ""]
            elif stat.S_ISLNK(m):
                e = ["symlink", "0777", st.st_uid, st.st_gid, 0, os.readlink(p)]
            elif stat.S_ISREG(m):
                h = hashlib.sha256(p.read_bytes()).hexdigest()
                e = ["file", f"{stat.S_IMODE(m):04o}", st.st_uid, st.st_gid, st.st_size, "sha256:" + h]
            else:
                e = ["other", f"{stat.S_IMODE(m):04o}", st.st_uid, st.st_gid, 0, ""]
            out[rel] = e
    return out


def prepare_context(case: Path, tmp: Path) -> Path:
    ctx = tmp / "ctx"
    shutil.copytree(case, ctx, symlinks=True)
    meta = json.loads((case / "case.json").read_text()) if (case / "case.json").exists() else {}
    for n in ("case.json", "expected.json"):
        (ctx / n).unlink(missing_ok=True)
    for dirpath, dirnames, filenames in os.walk(ctx):
        os.chmod(dirpath, 0o755)
        for f in filenames:
            p = Path(dirpath) / f
            if not p.is_symlink():
                os.chmod(p, 0o755 if os.stat(p).st_mode & 0o111 else 0o644)
    for d in meta.get("mkdirs", []):
        (ctx / d).mkdir(parents=True, exist_ok=True)
    for link, target in meta.get("symlinks", {}).items():
        os.symlink(target, ctx / link)
    for f, mode in meta.get("modes", {}).items():
        os.chmod(ctx / f, int(mode, 8))
    for f, own in meta.get("owners", {}).items():
        u, g = own.split(":")
        os.lchown(ctx / f, int(u), int(g))
    return ctx


def parse_copy(line: str) -> ops.Copy | None:
    words = shlex.split(line)
    if not words or words[0].upper() not in ("COPY", "ADD"):
        return None
    add = words[0].upper() == "ADD"
    flags: dict[str, list[str]] = {}
    args = words[1:]
    while args and args[0].startswith("--"):
        k, _, v = args.pop(0)[2:].partition("=")
        flags.setdefault(k, []).append(v)
    *srcs, dest = args
    chown = None
    if "chown" in flags:
        u, _, g = flags["chown"][0].partition(":")
        chown = ops.Chown(user=u, group=g)
    if len(srcs) > 1 and not dest.endswith("/") and "parents" in flags:
        dest += "/"
    return ops.Copy(src=1, src_paths=tuple(srcs), dest=dest, chown=chown,
                    chmod=int(flags["chmod"][0], 8) if "chmod" in flags else None,
                    unpack=add, exclude=tuple(flags.get("exclude", ())),
                    parents="parents" in flags)


CONFORMANCE = {
    "copy-chmod": ["/modes"],
    "copy-chown-name": ["/owned", "/created"],
    "copy-chown-unknown-user": ["/ghost"],
    "copy-dir-contents": ["/dst", "/etc/merged"],
    "copy-exclude": ["/site"],
    "copy-multiple-sources-no-slash": ["/dest"],
    "copy-parents": ["/dst", "/md", "/pivot", "/flat"],
    "copy-symlinks": ["/copied", "/dir-with", "/whole"],
    "copy-wildcards": ["/txt", "/question", "/class", "/conf", "/libdata", "/mixed"],
    "copy-wildcard-no-match": ["/dst", "/other"],
    "add-tar-gz": ["/opt"],
    "dockerignore-patterns": ["/ctx"],
}


def test_conformance_cases_are_present() -> None:
    """The shared data must be there: a missing checkout fails, it is never skipped."""
    missing = [n for n in CONFORMANCE if not (CASES / n / "Dockerfile").is_file()]
    assert not missing, f"conformance cases missing under {CASES}: {missing} (set $PYBUILD_SHARED)"


def _conformance_params() -> list:
    known = known_failures()
    return [pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=known[n])) if n in known else n
            for n in sorted(CONFORMANCE)]


@pytest.mark.parametrize("name", _conformance_params())
def test_conformance_copy_cases(tmp_path: Path, name: str) -> None:
    case = CASES / name
    assert case.is_dir(), f"conformance case {name} missing: set $PYBUILD_SHARED or put shared/ beside the checkout ({CASES})"
    ctx = prepare_context(case, tmp_path)
    root = make_root(tmp_path)
    ignore = (case / ".dockerignore")
    excludes = parse_dockerignore(ignore.read_text()) if ignore.exists() else ()
    src = SourceDir(path=ctx, excludes=excludes, reset_owner=True)
    actions = [a for line in (case / "Dockerfile").read_text().splitlines() if (a := parse_copy(line))]
    apply_file_op(root, ops.FileOp(actions=tuple(actions)), {1: src})
    expected = json.loads((case / "expected.json").read_text())
    prefixes = CONFORMANCE[name]

    def sel(files: dict) -> dict:
        return {p: v for p, v in files.items() if p.startswith(tuple(prefixes))}
    want = sel(expected["files"])
    assert want or name == "copy-wildcard-no-match"
    assert sel(snapshot(root)) == want
    got_links = _hardlink_groups(root)
    want_links = [sorted(g) for g in expected.get("hardlinks", [])
                  if any(p.startswith(tuple(prefixes)) for p in g)]
    assert sorted(got_links) == sorted(want_links)


def _hardlink_groups(root: Path) -> list[list[str]]:
    groups: dict[tuple[int, int], list[str]] = {}
    for dirpath, _, filenames in os.walk(root):
        for n in filenames:
            p = Path(dirpath) / n
            st = os.lstat(p)
            if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                groups.setdefault((st.st_dev, st.st_ino), []).append("/" + str(p.relative_to(root)))
    return [sorted(g) for g in groups.values()]


def test_copy_over_symlink(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    (root / "tmp/target.txt").write_text("original\n")
    os.symlink("/tmp/target.txt", root / "file-link")
    os.symlink("/tmp", root / "dir-link")
    ctx = tmp_path / "c"
    ctx.mkdir()
    (ctx / "file.txt").write_text("new\n")
    op = ops.FileOp(actions=(
        ops.Copy(src=1, src_paths=("file.txt",), dest="/file-link"),
        ops.Copy(src=1, src_paths=("file.txt",), dest="/dir-link/through.txt"),
    ))
    apply_file_op(root, op, {1: SourceDir(path=ctx, reset_owner=True)})
    assert os.readlink(root / "file-link") == "/tmp/target.txt"
    assert (root / "tmp/target.txt").read_text() == "new\n"
    assert (root / "tmp/through.txt").read_text() == "new\n"


def test_escaping_symlinks_stay_inside_root(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink("../../outside", root / "esc")      # would escape if followed on the host
    os.symlink(str(outside), root / "abs")
    ctx = tmp_path / "c"
    ctx.mkdir()
    (ctx / "f").write_text("x")
    os.symlink("../../../../etc/hostname", ctx / "up")   # source link pointing out of the context
    op = ops.FileOp(actions=(
        ops.Copy(src=1, src_paths=("f",), dest="/esc/"),
        ops.Copy(src=1, src_paths=("f",), dest="/abs/"),
    ))
    apply_file_op(root, op, {1: SourceDir(path=ctx)})
    assert list(outside.iterdir()) == []
    assert (root / "outside/f").read_text() == "x"           # "../../outside" clamped at root
    assert (root / str(outside).lstrip("/") / "f").exists()   # absolute target re-rooted
    with pytest.raises(SourceError):
        apply_file_op(root, ops.FileOp(actions=(ops.Copy(src=1, src_paths=("up",), dest="/u"),)),
                      {1: SourceDir(path=ctx)})


def test_stage_source_keeps_owners_and_hardlinks(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    stage = tmp_path / "stage"
    (stage / "app").mkdir(parents=True)
    (stage / "app/a").write_text("shared")
    os.link(stage / "app/a", stage / "app/b")
    os.lchown(stage / "app/a", 1234, 4321)
    os.chmod(stage / "app/a", 0o4750)
    os.utime(stage / "app/a", (1_000_000, 1_000_000))
    apply_file_op(root, ops.FileOp(actions=(ops.Copy(src=1, src_paths=("/app",), dest="/app"),)),
                  {1: SourceDir(path=stage)})
    a, b = os.lstat(root / "app/a"), os.lstat(root / "app/b")
    assert (a.st_ino, a.st_uid, a.st_gid) == (b.st_ino, 1234, 4321)
    assert stat.S_IMODE(a.st_mode) == 0o4750
    assert a.st_mtime == 1_000_000


def test_missing_literal_source_errors_but_wildcard_does_not(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    ctx = tmp_path / "c"
    ctx.mkdir()
    src = {1: SourceDir(path=ctx)}
    apply_file_op(root, ops.FileOp(actions=(ops.Copy(src=1, src_paths=("*.x",), dest="/d/"),)), src)
    assert not (root / "d").exists()
    with pytest.raises(SourceError, match="not found"):
        apply_file_op(root, ops.FileOp(actions=(ops.Copy(src=1, src_paths=("nope",), dest="/d/"),)), src)
    (ctx / "ignored.txt").write_text("x")
    with pytest.raises(SourceError):
        apply_file_op(root, ops.FileOp(actions=(ops.Copy(src=1, src_paths=("ignored.txt",), dest="/d/"),)),
                      {1: SourceDir(path=ctx, excludes=("*.txt",))})


def test_dotdot_clamped_in_sources(tmp_path: Path) -> None:
    ctx = tmp_path / "c"
    (ctx / "a").mkdir(parents=True)
    (ctx / "f").write_text("x")
    [m] = resolve_sources(ctx, "../../a/../f")
    assert m.rel == "f" and m.host == ctx / "f"


def test_chown_resolution(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    assert resolve_chown(root, ops.Chown(user="app")) == (1000, 1000)
    assert resolve_chown(root, ops.Chown(user="app", group="staff")) == (1000, 50)
    assert resolve_chown(root, ops.Chown(user="42")) == (42, 42)
    assert resolve_chown(root, ops.Chown(user="42", group="7")) == (42, 7)
    assert resolve_chown(root, ops.Chown(user="ghost", group="ghostgroup")) == (0, 0)
    assert resolve_chown(root, None) is None


def test_mkdir_and_mkfile(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    op = ops.FileOp(actions=(
        ops.Mkdir(path="/work/dir", mode=0o750, chown=ops.Chown(user="app")),
        ops.Mkfile(path="/work/dir/f", data=b"hello", mode=0o600, chown=ops.Chown(user="1", group="2")),
        ops.Mkdir(path="/work/dir", mode=0o700),   # exists: unchanged
    ))
    apply_file_op(root, op, {})
    st = os.lstat(root / "work/dir")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o750, 1000, 1000)
    parent = os.lstat(root / "work")
    assert (parent.st_uid, stat.S_IMODE(parent.st_mode)) == (1000, 0o750)
    f = os.lstat(root / "work/dir/f")
    assert (stat.S_IMODE(f.st_mode), f.st_uid, f.st_gid) == (0o600, 1, 2)
    assert (root / "work/dir/f").read_bytes() == b"hello"


def test_add_non_archive_is_copied(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    ctx = tmp_path / "c"
    ctx.mkdir()
    (ctx / "notes.tar.gz").write_bytes(b"not really a tarball")
    apply_file_op(root, ops.FileOp(actions=(ops.Copy(src=1, src_paths=("notes.tar.gz",), dest="/x/", unpack=True),)),
                  {1: SourceDir(path=ctx)})
    assert (root / "x/notes.tar.gz").read_bytes() == b"not really a tarball"


def test_add_archive_refuses_escape(tmp_path: Path) -> None:
    root = make_root(tmp_path)
    ctx = tmp_path / "c"
    ctx.mkdir()
    with tarfile.open(ctx / "evil.tar", "w") as tf:
        ti = tarfile.TarInfo("link")
        ti.type, ti.linkname = tarfile.SYMTYPE, "/"
        tf.addfile(ti)
        data = b"pwned"
        ti = tarfile.TarInfo("link/tmp/pwned")
        ti.size = len(data)
        import io
        tf.addfile(ti, io.BytesIO(data))
    apply_file_op(root, ops.FileOp(actions=(ops.Copy(src=1, src_paths=("evil.tar",), dest="/x", unpack=True),)),
                  {1: SourceDir(path=ctx)})
    # the link's target "/" means the root being built, never the host root
    assert (root / "x/tmp/pwned").read_bytes() == b"pwned"
    assert not Path("/tmp/pwned").exists()


def test_add_archive_cleans_inner_dotdot_drops_whiteouts_and_refuses_escapes(tmp_path: Path) -> None:
    """BuildKit v0.25 (conformance-extra add-archive-dotdot, add-archive-whiteout-names): `a/../b`
    is `b`, `.wh.*` entries are skipped, and `../x` is refused ("invalid entry name")."""
    import io
    from builder.errors import LayerError
    root = make_root(tmp_path)
    ctx = tmp_path / "c"
    ctx.mkdir()
    (root / "x").mkdir()
    (root / "x" / "keep").write_text("lower")

    def archive(name: str, names: tuple[str, ...]) -> None:
        with tarfile.open(ctx / name, "w") as tf:
            for n in names:
                ti = tarfile.TarInfo(n)
                ti.size = 2
                tf.addfile(ti, io.BytesIO(b"ok"))
    archive("a.tar", ("sub/../normalised.txt", ".wh.keep", "d/.wh..wh..opq", "d/f"))
    apply_file_op(root, ops.FileOp(actions=(ops.Copy(src=1, src_paths=("a.tar",), dest="/x", unpack=True),)),
                  {1: SourceDir(path=ctx)})
    assert sorted(p.name for p in (root / "x").iterdir()) == ["d", "keep", "normalised.txt"]
    assert (root / "x" / "keep").read_text() == "lower"
    assert [p.name for p in (root / "x" / "d").iterdir()] == ["f"]
    archive("b.tar", ("../escape.txt",))
    with pytest.raises(LayerError, match="invalid entry name"):
        apply_file_op(root, ops.FileOp(actions=(ops.Copy(src=1, src_paths=("b.tar",), dest="/x", unpack=True),)),
                      {1: SourceDir(path=ctx)})
    assert not (tmp_path / "escape.txt").exists() and not (root / "escape.txt").exists()


def test_add_chown_owns_what_an_archive_unpacks(tmp_path: Path) -> None:
    import io
    root = make_root(tmp_path)
    ctx = tmp_path / "c"
    ctx.mkdir()
    with tarfile.open(ctx / "a.tar", "w") as tf:
        ti = tarfile.TarInfo("f")
        ti.size, ti.uid, ti.gid = 2, 7, 7
        tf.addfile(ti, io.BytesIO(b"ok"))
    apply_file_op(root, ops.FileOp(actions=(ops.Copy(src=1, src_paths=("a.tar",), dest="/x/", unpack=True,
                                                     chown=ops.Chown(user="1000", group="50")),)),
                  {1: SourceDir(path=ctx)})
    st = (root / "x" / "f").stat()
    assert (st.st_uid, st.st_gid) == (1000, 50)


def test_parents_never_follow_an_image_symlink_out_of_the_root(tmp_path: Path) -> None:
    """COPY --parents a/b /app/ where the image has /app/a -> /<host dir>: stays inside root."""
    root = make_root(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "app").mkdir()
    os.symlink(str(outside), root / "app" / "a")
    src = tmp_path / "src"
    (src / "a" / "b").mkdir(parents=True)
    (src / "a" / "b" / "f").write_text("x")
    apply_file_op(root, ops.FileOp(actions=(ops.Copy(src=1, src_paths=("a/b",), dest="/app/", parents=True),)),
                  {1: SourceDir(path=src)})
    assert os.listdir(outside) == []
    assert (root / str(outside).lstrip("/") / "b" / "f").read_text() == "x"
