"""Tests for builder.solve.contenthash: digests depend on content, mode bits, type, link targets only."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from builder.solve.contenthash import ChecksumMemo, checksum_sources
from builder.errors import SourceError


@pytest.fixture()
def ctx(tmp_path: Path) -> Path:
    c = tmp_path / "ctx"
    (c / "dir/sub").mkdir(parents=True)
    (c / "a.txt").write_text("alpha")
    (c / "dir/b.txt").write_text("beta")
    (c / "dir/sub/c.bin").write_bytes(b"\0" * 1000)
    os.symlink("b.txt", c / "dir/link")
    return c


def digest(c: Path, *paths: str, **kw) -> str:
    return str(checksum_sources(c, paths or ("a.txt", "dir"), **kw))


def test_mtime_does_not_matter(ctx: Path) -> None:
    d0 = digest(ctx)
    os.utime(ctx / "a.txt", (1, 1))
    os.utime(ctx / "dir/sub", (2, 2))
    assert digest(ctx) == d0


def test_owner_does_not_matter(ctx: Path) -> None:
    d0 = digest(ctx)
    os.lchown(ctx / "dir/b.txt", 1234, 4321)
    os.lchown(ctx / "dir/link", 99, 99)
    assert digest(ctx) == d0


def test_content_change(ctx: Path) -> None:
    d0 = digest(ctx)
    (ctx / "dir/sub/c.bin").write_bytes(b"\0" * 999 + b"\1")
    assert digest(ctx) != d0


def test_chmod_change(ctx: Path) -> None:
    d0 = digest(ctx)
    os.chmod(ctx / "dir/b.txt", 0o755)
    assert digest(ctx) != d0


def test_link_target_and_type_change(ctx: Path) -> None:
    d0 = digest(ctx)
    os.unlink(ctx / "dir/link")
    os.symlink("../a.txt", ctx / "dir/link")
    d1 = digest(ctx)
    assert d1 != d0
    os.unlink(ctx / "dir/link")
    (ctx / "dir/link").write_text("b.txt")
    assert digest(ctx) not in (d0, d1)


def test_rename_changes_digest(ctx: Path) -> None:
    d0 = digest(ctx)
    os.rename(ctx / "dir/b.txt", ctx / "dir/b2.txt")
    assert digest(ctx) != d0


def test_unselected_and_ignored_files_do_not_matter(ctx: Path) -> None:
    d0 = digest(ctx, "dir", excludes=("dir/sub",))
    (ctx / "a.txt").write_text("changed, but not selected")
    (ctx / "dir/sub/c.bin").write_text("changed, but ignored")
    assert digest(ctx, "dir", excludes=("dir/sub",)) == d0
    assert digest(ctx, "dir") != d0
    d1 = digest(ctx, "dir", copy_excludes=("*.txt",))
    (ctx / "dir/b.txt").write_text("excluded by COPY --exclude")
    assert digest(ctx, "dir", copy_excludes=("*.txt",)) == d1


def test_wildcards_and_missing(ctx: Path) -> None:
    d0 = digest(ctx, "*.txt")
    (ctx / "notes.md").write_text("not matched")
    assert digest(ctx, "*.txt") == d0
    (ctx / "z.txt").write_text("matched")
    assert digest(ctx, "*.txt") != d0
    digest(ctx, "*.nomatch")   # no match is fine
    with pytest.raises(SourceError):
        digest(ctx, "missing.txt")


def test_top_symlink_followed(ctx: Path) -> None:
    os.symlink("a.txt", ctx / "top")
    d0 = digest(ctx, "top")
    (ctx / "a.txt").write_text("other")
    assert digest(ctx, "top") != d0
    assert digest(ctx, "top", follow_top_symlinks=False) == digest(ctx, "top", follow_top_symlinks=False)


@pytest.fixture
def no_racy_window(monkeypatch):  # type: ignore[no-untyped-def]
    """Files made by a test are seconds old at most; let the memo keep them anyway."""
    from builder.solve import contenthash
    monkeypatch.setattr(contenthash, "RACY_NS", 0)


def test_recently_changed_files_are_not_memoised(ctx: Path, tmp_path: Path) -> None:
    """A file changed in the same clock tick as the checksum keeps its stat data: never trust it."""
    memo = ChecksumMemo(tmp_path / "memo.json")
    checksum_sources(ctx, ["."], memo=memo)
    assert not (tmp_path / "memo.json").exists() or json.loads((tmp_path / "memo.json").read_text()) == {}


@pytest.mark.usefixtures("no_racy_window")
def test_memo_skips_rereading_and_persists(ctx: Path, tmp_path: Path) -> None:
    memo_path = tmp_path / "memo.json"
    d0 = digest(ctx, memo=ChecksumMemo(memo_path))
    data = json.loads(memo_path.read_text())
    assert len(data["files"]) == 3
    # Poison the memo for c.bin: a fresh memo object must use the stored value (no re-read).
    st = os.lstat(ctx / "dir/sub/c.bin")
    key = f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"
    data["files"][key] = "0" * 64
    memo_path.write_text(json.dumps(data))
    assert digest(ctx, memo=ChecksumMemo(memo_path)) != d0
    # A real change (new ctime) invalidates the entry.
    (ctx / "dir/sub/c.bin").write_bytes(b"\0" * 1000)
    assert digest(ctx, memo=ChecksumMemo(memo_path)) == d0 == digest(ctx)


@pytest.mark.usefixtures("no_racy_window")
def test_memo_merges_concurrent_writers(ctx: Path, tmp_path: Path) -> None:
    memo_path = tmp_path / "memo.json"
    m1, m2 = ChecksumMemo(memo_path), ChecksumMemo(memo_path)
    checksum_sources(ctx, ["a.txt"], memo=m1)
    checksum_sources(ctx, ["dir/b.txt"], memo=m2)
    assert len(json.loads(memo_path.read_text())["files"]) == 2
