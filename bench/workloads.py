"""Benchmark workloads: build contexts and Dockerfiles, generated under a work directory.

Every workload is generated (never edited in place in testdata/) and described by a frozen
`Workload`. `Workload.change(n)` rewrites one small context file with content that is unique
for each n, for the one-file-change scenario; `Workload.restore()` puts the original back.
Standard library only.
"""
from __future__ import annotations

import random
import re
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

BASE_REPO = "conformance/busybox:1"
EXAMPLE_BASE_REPO = "pybuild-bench/example-base:latest"
BIG_SEED = 20240601


@dataclass(frozen=True, slots=True, kw_only=True)
class Workload:
    """One build: a context dir, a Dockerfile per builder, and the file the change scenario edits.

    `pybuild_args` are extra pybuild arguments (e.g. a named build context). `change_file` is
    relative to `context`; `original` is its pristine content. `steps` counts RUN steps (used for
    the per-RUN overhead). `expect` names paths a tar output must hold (a sanity check that the
    build really ran). `cold_only` workloads only get the cold scenario.
    """

    name: str
    context: Path
    pybuild_dockerfile: Path
    buildkit_dockerfile: Path
    pybuild_args: tuple[str, ...]
    change_file: str
    original: bytes
    steps: int
    expect: tuple[str, ...]
    cold_only: bool = False

    def change(self, n: int) -> None:
        """Rewrite the change file: original content plus a marker unique for n (size changes too)."""
        path = self.context / self.change_file
        marker = f"\n/* bench change {n} */\n".encode()
        path.write_bytes(self.original + marker)

    def restore(self) -> None:
        """Put the change file back to its original content."""
        (self.context / self.change_file).write_bytes(self.original)


def missing_in_tar(path: Path, expect: tuple[str, ...]) -> list[str]:
    """The names in `expect` that the tar at `path` does not hold (leading ./ and / ignored)."""
    want = set(expect)
    try:
        with tarfile.open(path, "r:") as tf:
            for member in tf:
                want.discard(member.name.lstrip("./").lstrip("/").rstrip("/"))
                if not want:
                    break
    except (OSError, tarfile.TarError) as e:
        return [f"unreadable tar: {e}"]
    return sorted(want)


def _write(path: Path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    path.write_bytes(data)


def make_example(work: Path, repo: Path, registry: str) -> tuple[Workload, Path]:
    """The bundled example: copy testdata/example, make its base OCI layout with make-base.py.

    Returns the workload and the OCI layout dir (tag `latest`). The BuildKit Dockerfile variant
    (outside the context) names `{registry}/{EXAMPLE_BASE_REPO}` instead of the `base` context;
    the caller pushes the layout there (see `push_layout`).
    """
    root = work / "example"
    ctx = root / "ctx"
    if ctx.exists():
        shutil.rmtree(ctx)
    shutil.copytree(repo / "testdata" / "example", ctx)
    layout = root / "base-layout"
    if layout.exists():
        shutil.rmtree(layout)
    subprocess.run([sys.executable, str(repo / "testdata" / "make-base.py"), str(layout)],
                   check=True, stdout=subprocess.DEVNULL)
    text = (ctx / "Dockerfile").read_text()
    ref = f"{registry}/{EXAMPLE_BASE_REPO}"
    variant = re.sub(r"(?im)^(\s*FROM\s+(?:--\S+\s+)*)base(?=\s|$)", lambda m: m.group(1) + ref, text)
    if variant == text:
        raise RuntimeError("testdata/example/Dockerfile has no `FROM base` line to rewrite")
    bk_df = root / "buildkit.Dockerfile"
    _write(bk_df, variant)
    change = "site/style.css"
    wl = Workload(name="example", context=ctx, pybuild_dockerfile=ctx / "Dockerfile",
                  buildkit_dockerfile=bk_df,
                  pybuild_args=("--build-context", f"base=oci-layout://{layout}:latest"),
                  change_file=change, original=(ctx / change).read_bytes(), steps=2,
                  expect=("var/www/index.html", "var/www/style.css", "bin/busybox"))
    return wl, layout


def push_layout(layout: Path, registry: str) -> str:
    """Copy the OCI layout's `latest` into the local registry with skopeo; returns the reference."""
    ref = f"{registry}/{EXAMPLE_BASE_REPO}"
    subprocess.run(["skopeo", "copy", "--quiet", "--insecure-policy", "--dest-tls-verify=false",
                    f"oci:{layout}:latest", f"docker://{ref}"], check=True)
    return ref


def _small_payload(rng: random.Random, i: int) -> bytes:
    line = f"file {i:05d} " + "x" * rng.randrange(0, 60) + "\n"
    return (line * rng.randrange(1, 30)).encode()


def _write_big(path: Path, stamp: Path, size_mb: int, seed: int) -> None:
    """Write size_mb MB of seeded random bytes to path, unless stamp says it is already there."""
    want = f"{size_mb}:{seed}"
    if path.exists() and stamp.exists() and stamp.read_text() == want \
            and path.stat().st_size == size_mb << 20:
        return
    rng = random.Random(seed)
    with open(path, "wb") as f:
        for _ in range(size_mb):
            f.write(rng.randbytes(1 << 20))
    stamp.write_text(want)


def make_big(work: Path, registry: str, files: int = 5000, big_mb: int = 200) -> Workload:
    """`files` small files in nested dirs (10 × 10 × n) plus one `big_mb` MB file of random bytes.

    Dockerfile: FROM the busybox base, COPY . /data, RUN a small command. The small files are
    rewritten each time; the big file is kept between invocations when its size and seed match
    (a stamp file beside the context records them).
    """
    root = work / "big"
    ctx = root / "ctx"
    tree = ctx / "tree"
    if tree.exists():
        shutil.rmtree(tree)
    rng = random.Random(BIG_SEED)
    per_leaf = max(1, -(-files // 100))
    for i in range(files):
        leaf = i // per_leaf
        _write(tree / f"d{leaf // 10:02d}" / f"d{leaf % 10:02d}" / f"f{i:05d}.txt", _small_payload(rng, i))
    _write_big(ctx / "big.bin", root / "big.stamp", big_mb, BIG_SEED)
    df = (f"FROM {registry}/{BASE_REPO}\n"
          "COPY . /data\n"
          "RUN find /data -type f | wc -l > /data-count\n")
    _write(ctx / "Dockerfile", df)
    change = "tree/d00/d00/f00000.txt"
    return Workload(name="big", context=ctx, pybuild_dockerfile=ctx / "Dockerfile",
                    buildkit_dockerfile=ctx / "Dockerfile", pybuild_args=(),
                    change_file=change, original=(ctx / change).read_bytes(), steps=1,
                    expect=("data/big.bin", "data/tree/d00/d00/f00000.txt", "data-count"))


def make_runs(work: Path, registry: str, runs: int = 40) -> Workload:
    """`runs` small RUN steps (`RUN echo N > /fN`) FROM the busybox base; context: one marker file."""
    ctx = work / "runs" / "ctx"
    if ctx.exists():
        shutil.rmtree(ctx)
    lines = [f"FROM {registry}/{BASE_REPO}"] + [f"RUN echo {i} > /f{i}" for i in range(runs)]
    _write(ctx / "Dockerfile", "\n".join(lines) + "\n")
    _write(ctx / "marker.txt", "marker\n")
    return Workload(name="runs", context=ctx, pybuild_dockerfile=ctx / "Dockerfile",
                    buildkit_dockerfile=ctx / "Dockerfile", pybuild_args=(),
                    change_file="marker.txt", original=b"marker\n", steps=runs,
                    expect=tuple(f"f{i}" for i in range(runs)))


def make_base(work: Path, registry: str) -> Workload:
    """Just `FROM` the busybox base: the reference for the per-RUN overhead (cold only)."""
    ctx = work / "base" / "ctx"
    if ctx.exists():
        shutil.rmtree(ctx)
    _write(ctx / "Dockerfile", f"FROM {registry}/{BASE_REPO}\n")
    _write(ctx / "marker.txt", "marker\n")
    return Workload(name="base", context=ctx, pybuild_dockerfile=ctx / "Dockerfile",
                    buildkit_dockerfile=ctx / "Dockerfile", pybuild_args=(),
                    change_file="marker.txt", original=b"marker\n", steps=0, cold_only=True,
                    expect=("bin/busybox", "etc/passwd"))
