#!/usr/bin/env python3
"""pybuild vs BuildKit benchmark: prints a table and writes bench/results/<timestamp>.json.

    python3 bench/run.py [--builders pybuild,buildkit] [--workloads example,big,runs]
                         [--outputs tar,image] [--repeat 3] [--pybuild PATH] ...

Workloads: example (testdata/example, base from a local OCI layout), big (5,000 small files +
one 200 MB random file, COPY . /data), runs (40 small RUN steps); "base" (FROM only, cold) is
added with runs for the per-RUN overhead. Scenarios: cold, noop (everything cached), change
(one small context file changed). Outputs: tar (`-o type=tar,dest=...` for both) and image
(`-t`: docker's image store / pybuild's store). Each timing is the median of --repeat runs.
See bench/README.md. Run it as root on a machine with nothing else busy; it wipes BuildKit's
build cache (`docker builder prune -af`) and the images it made or pulled from --registry.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from builders import BuildKit, Pybuild, ensure_dockerd, stop_dockerd  # noqa: E402
from measure import DaemonMemory, run_measured  # noqa: E402
from workloads import BASE_REPO, Workload, missing_in_tar, make_base, make_big, make_example, make_runs, push_layout  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SCENARIOS = ("cold", "noop", "change")


@dataclass(slots=True, kw_only=True)
class Run:
    """One timed build."""

    seconds: float
    ok: bool
    exit_code: int | None
    timed_out: bool
    maxrss_kb: int
    tree_peak_kb: int
    cpu_seconds: float
    daemon: dict[str, float] | None
    output_bytes: int | None
    log: str


@dataclass(slots=True, kw_only=True)
class Cell:
    """All runs of one (builder, workload, output mode, scenario)."""

    builder: str
    workload: str
    mode: str
    scenario: str
    status: str = "ok"          # ok | failed | timeout | skipped
    error: str = ""
    runs: list[Run] = field(default_factory=list)

    @property
    def median(self) -> float | None:
        good = [r.seconds for r in self.runs if r.ok]
        return statistics.median(good) if good and self.status == "ok" else None

    def peak_kb(self) -> int | None:
        """Builder memory: pybuild's ru_maxrss; BuildKit's dockerd VmHWM delta."""
        vals = [int(r.daemon["delta_kb"]) if r.daemon else r.maxrss_kb for r in self.runs if r.ok]
        if self.builder == "buildkit" and not any(r.daemon for r in self.runs):
            return None
        return max(vals) if vals else None

    def total_kb(self) -> int | None:
        """Whole footprint: pybuild's sampled tree RSS sum; BuildKit's dockerd VmHWM + client."""
        if self.builder == "buildkit":
            vals = [int(r.daemon["hwm_kb"]) + r.maxrss_kb for r in self.runs if r.ok and r.daemon]
        else:
            vals = [max(r.tree_peak_kb, r.maxrss_kb) for r in self.runs if r.ok]
        return max(vals) if vals else None


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- environment

def registry_answers(registry: str, path: str = "/v2/") -> bool:
    req = urllib.request.Request(f"http://{registry}{path}", method="GET", headers={
        "Accept": "application/vnd.oci.image.manifest.v1+json,"
                  "application/vnd.docker.distribution.manifest.v2+json"})
    try:
        with urllib.request.urlopen(req, timeout=5):
            return True
    except (urllib.error.URLError, OSError):
        return False


def ensure_registry(registry: str, conformance: Path) -> None:
    """Start the local registry and push the busybox base if they are missing."""
    env = {**os.environ, "REGISTRY_ADDR": registry, "REGISTRY": registry}
    if not registry_answers(registry):
        log(f"starting a registry on {registry}")
        subprocess.run(["bash", str(conformance / "start-registry.sh")], check=True, env=env,
                       stdout=subprocess.DEVNULL)
    repo, _, tag = BASE_REPO.partition(":")
    if not registry_answers(registry, f"/v2/{repo}/manifests/{tag}"):
        log(f"pushing {registry}/{BASE_REPO}")
        subprocess.run(["bash", str(conformance / "make-base-images.sh")], check=True, env=env,
                       stdout=subprocess.DEVNULL)


def git_head() -> str:
    r = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                       capture_output=True, text=True)
    return r.stdout.strip() or "?"


# ---------------------------------------------------------------- running

def one_build(builder: BuildKit | Pybuild, wl: Workload, mode: str, scenario: str, i: int,
              logs: Path, out_dir: Path, timeout: float, dpid: int | None) -> Run:
    out = out_dir / f"{builder.name}-{wl.name}.tar"
    out.unlink(missing_ok=True)
    cmd, env = builder.command(wl, mode, out)
    mem = DaemonMemory(dpid) if dpid else None
    if mem:
        mem.start()
    res = run_measured(cmd, env=env, timeout=timeout,
                       log=logs / f"{builder.name}-{wl.name}-{mode}-{scenario}-{i}.log")
    peak = mem.stop() if mem else None
    size = out.stat().st_size if out.exists() else None
    ok = res.ok
    if ok and mode == "tar":
        missing = missing_in_tar(out, wl.expect) if size else ["the whole tar (none written)"]
        if missing:
            ok = False
            with open(res.log, "a") as f:
                f.write(f"\nbench: exit 0 but the output tar {out} lacks: {', '.join(missing[:5])}\n")
    out.unlink(missing_ok=True)
    return Run(seconds=res.seconds, ok=ok, exit_code=res.exit_code, timed_out=res.timed_out,
               maxrss_kb=res.maxrss_kb, tree_peak_kb=res.tree_peak_kb, cpu_seconds=res.cpu_seconds,
               daemon=asdict(peak) if peak else None, output_bytes=size, log=res.log)


def failure_text(run: Run) -> str:
    head = "timeout" if run.timed_out else f"exit {run.exit_code}"
    try:
        text = Path(run.log).read_text(errors="replace")
    except OSError:
        text = ""
    lines = [ln for ln in text.strip().splitlines() if ln.strip()][-8:]
    return head + (": " + " | ".join(lines) if lines else "")


def run_cell(builder: BuildKit | Pybuild, wl: Workload, mode: str, scenario: str, args: argparse.Namespace,
             logs: Path, out_dir: Path, dpid: int | None) -> Cell:
    cell = Cell(builder=builder.name, workload=wl.name, mode=mode, scenario=scenario)
    for i in range(args.repeat):
        if scenario == "cold":
            builder.reset()
        elif scenario == "change":
            wl.change(i + 1)
        run = one_build(builder, wl, mode, scenario, i, logs, out_dir, args.timeout, dpid)
        cell.runs.append(run)
        mark = "ok" if run.ok else ("TIMEOUT" if run.timed_out else f"FAILED exit {run.exit_code}")
        log(f"  [{builder.name} {wl.name} {mode} {scenario} {i + 1}/{args.repeat}] "
            f"{run.seconds:8.3f}s  rss {run.maxrss_kb / 1024:7.1f} MB  {mark}")
        if not run.ok:
            cell.status = "timeout" if run.timed_out else "failed"
            cell.error = failure_text(run)
            log(f"    {cell.error[:400]}")
            break
    return cell


def bench_builder(builder: BuildKit | Pybuild, workloads: list[Workload], args: argparse.Namespace,
                  logs: Path, out_dir: Path) -> list[Cell]:
    cells: list[Cell] = []
    dpid = builder.daemon_pid() if isinstance(builder, BuildKit) else None
    for wl in workloads:
        for mode in args.outputs:
            wl.restore()
            scenarios = ("cold",) if wl.cold_only else SCENARIOS
            cold_failed = ""
            for scenario in scenarios:
                if cold_failed:
                    cells.append(Cell(builder=builder.name, workload=wl.name, mode=mode, scenario=scenario,
                                      status="skipped", error=f"cold build failed: {cold_failed}"))
                    continue
                cell = run_cell(builder, wl, mode, scenario, args, logs, out_dir, dpid)
                cells.append(cell)
                if scenario == "cold" and cell.status != "ok":
                    cold_failed = cell.error[:200]
            wl.restore()
    return cells


def unavailable(name: str, workloads: list[Workload], outputs: list[str], reason: str) -> list[Cell]:
    return [Cell(builder=name, workload=wl.name, mode=m, scenario=s, status="failed", error=reason)
            for wl in workloads for m in outputs for s in (("cold",) if wl.cold_only else SCENARIOS)]


# ---------------------------------------------------------------- report

def find(cells: list[Cell], builder: str, wl: str, mode: str, scenario: str) -> Cell | None:
    for c in cells:
        if (c.builder, c.workload, c.mode, c.scenario) == (builder, wl, mode, scenario):
            return c
    return None


def per_run_ms(cells: list[Cell], builder: str, mode: str, steps: int) -> float | None:
    runs, base = find(cells, builder, "runs", mode, "cold"), find(cells, builder, "base", mode, "cold")
    if not runs or not base or runs.median is None or base.median is None or steps <= 0:
        return None
    return (runs.median - base.median) / steps * 1000


def fmt_cell(c: Cell | None, value: float | None, unit: str) -> str:
    if c is None:
        return "-"
    if c.status != "ok":
        return {"failed": "FAILED", "timeout": "TIMEOUT", "skipped": "skipped"}.get(c.status, c.status)
    if value is None:
        return "n/a"
    return f"{value:.3f}s" if unit == "s" else f"{value:.1f}{unit}"


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a is not None and b else "-"


def build_rows(cells: list[Cell], workloads: list[Workload], outputs: list[str]) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for wl in workloads:
        for mode in outputs:
            for scenario in (("cold",) if wl.cold_only else SCENARIOS):
                p, b = find(cells, "pybuild", wl.name, mode, scenario), find(cells, "buildkit", wl.name, mode, scenario)
                pv, bv = (p.median if p else None), (b.median if b else None)
                rows.append({"workload": wl.name, "output": mode, "metric": scenario, "unit": "s",
                             "pybuild": pv, "buildkit": bv, "ratio": (pv / bv) if pv is not None and bv else None,
                             "_p": fmt_cell(p, pv, "s"), "_b": fmt_cell(b, bv, "s")})
            p, b = find(cells, "pybuild", wl.name, mode, "cold"), find(cells, "buildkit", wl.name, mode, "cold")
            for metric, getter in (("peak-mem(cold)", Cell.peak_kb), ("total-mem(cold)", Cell.total_kb)):
                pk, bk = (getter(p) if p else None), (getter(b) if b else None)
                pv = pk / 1024 if pk is not None else None
                bv = bk / 1024 if bk is not None else None
                rows.append({"workload": wl.name, "output": mode, "metric": metric, "unit": "MB",
                             "pybuild": pv, "buildkit": bv, "ratio": (pv / bv) if pv is not None and bv else None,
                             "_p": fmt_cell(p, pv, " MB"), "_b": fmt_cell(b, bv, " MB")})
            if wl.name == "runs":
                pv, bv = per_run_ms(cells, "pybuild", mode, wl.steps), per_run_ms(cells, "buildkit", mode, wl.steps)
                rows.append({"workload": "runs", "output": mode, "metric": "per-RUN", "unit": "ms",
                             "pybuild": pv, "buildkit": bv, "ratio": (pv / bv) if pv is not None and bv else None,
                             "_p": f"{pv:.1f} ms" if pv is not None else "-",
                             "_b": f"{bv:.1f} ms" if bv is not None else "-"})
    return rows


def print_table(rows: list[dict[str, object]]) -> None:
    head = ("workload", "output", "metric", "pybuild", "buildkit", "pybuild/buildkit")
    table = [head] + [(str(r["workload"]), str(r["output"]), str(r["metric"]), str(r["_p"]), str(r["_b"]),
                       f"{r['ratio']:.2f}x" if r["ratio"] is not None else "-") for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    for n, row in enumerate(table):
        print("  ".join(v.ljust(w) if i < 3 else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths))))
        if n == 0:
            print("  ".join("-" * w for w in widths))


# ---------------------------------------------------------------- main

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--builders", default="pybuild,buildkit", help="comma list: pybuild,buildkit")
    ap.add_argument("--workloads", default="example,big,runs", help="comma list: example,big,runs")
    ap.add_argument("--outputs", default="tar,image",
                    help="comma list: tar (-o type=tar,dest=...), image (-t into the builder's store)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per timing; the median is reported")
    ap.add_argument("--pybuild", default=shutil.which("pybuild") or "/opt/pybuild-venv/bin/pybuild")
    ap.add_argument("--docker", default="/usr/bin/docker", help="docker client (20.10+, BuildKit)")
    ap.add_argument("--registry", default="127.0.0.1:5000", help="local registry holding the bases")
    ap.add_argument("--conformance-dir", type=Path, default=REPO.parent / "shared" / "conformance",
                    help="holds start-registry.sh and make-base-images.sh")
    ap.add_argument("--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "pybuild-bench",
                    help="generated contexts, pybuild root, logs (the 200 MB file is kept between runs)")
    ap.add_argument("--results-dir", type=Path, default=HERE / "results")
    ap.add_argument("--big-files", type=int, default=5000)
    ap.add_argument("--big-mb", type=int, default=200)
    ap.add_argument("--runs", type=int, default=40, help="RUN steps in the runs workload")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per build before it is killed")
    ap.add_argument("--no-start-dockerd", action="store_true", help="do not start dockerd if it is not running")
    ap.add_argument("--keep-dockerd", action="store_true", help="leave a dockerd this script started running")
    a = ap.parse_args(argv)
    a.builders = [b for b in a.builders.split(",") if b]
    a.workloads = [w for w in a.workloads.split(",") if w]
    a.outputs = [o for o in a.outputs.split(",") if o]
    for name, have, allowed in (("builder", a.builders, {"pybuild", "buildkit"}),
                                ("workload", a.workloads, {"example", "big", "runs"}),
                                ("output", a.outputs, {"tar", "image"})):
        bad = set(have) - allowed
        if bad or not have:
            ap.error(f"unknown or empty {name}: {sorted(bad)} (choose from {sorted(allowed)})")
    if a.repeat < 1:
        ap.error("--repeat must be >= 1")
    return a


def make_workloads(args: argparse.Namespace, push: bool) -> list[Workload]:
    work: Path = args.workdir
    out: list[Workload] = []
    for name in args.workloads:
        log(f"generating workload {name}")
        if name == "example":
            wl, layout = make_example(work, REPO, args.registry)
            if push:
                push_layout(layout, args.registry)
            out.append(wl)
        elif name == "big":
            out.append(make_big(work, args.registry, files=args.big_files, big_mb=args.big_mb))
        elif name == "runs":
            out.append(make_base(work, args.registry))
            out.append(make_runs(work, args.registry, runs=args.runs))
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    args.workdir.mkdir(parents=True, exist_ok=True)
    logs = args.workdir / "logs" / stamp
    out_dir = args.workdir / "out"
    out_dir.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    ensure_registry(args.registry, args.conformance_dir)

    started_dockerd = None
    bk: BuildKit | None = None
    if "buildkit" in args.builders:
        reason, started_dockerd = ensure_dockerd(args.docker, start=not args.no_start_dockerd,
                                                 log=args.workdir / "dockerd.log")
        bk = BuildKit(args.docker, args.registry)
        reason = reason or bk.probe()
        if reason:
            notes.append(f"BuildKit not measured: {reason}")
            log(f"BuildKit not measured: {reason}")
            bk = None
    pb = Pybuild(args.pybuild, args.workdir) if "pybuild" in args.builders else None

    workloads = make_workloads(args, push=bk is not None)
    cells: list[Cell] = []
    versions: dict[str, str] = {}
    try:
        if bk is not None:
            versions["buildkit"] = bk.version()
            log(f"== BuildKit ({versions['buildkit']})")
            cells += bench_builder(bk, workloads, args, logs, out_dir)
        if pb is not None:
            reason = pb.probe()
            versions["pybuild"] = pb.version() if reason is None else "unavailable"
            if reason:
                notes.append(f"pybuild not usable: {reason}")
                log(f"pybuild not usable: {reason}")
                cells += unavailable("pybuild", workloads, args.outputs, reason)
            else:
                log(f"== pybuild ({versions['pybuild']})")
                cells += bench_builder(pb, workloads, args, logs, out_dir)
    finally:
        for wl in workloads:
            wl.restore()
        if pb is not None:
            shutil.rmtree(pb.root, ignore_errors=True)  # its store: up to GBs with the big workload
        if started_dockerd and not args.keep_dockerd:
            stop_dockerd(started_dockerd)

    rows = build_rows(cells, workloads, args.outputs)
    print()
    print_table(rows)
    for n in notes:
        print(f"note: {n}")
    for c in cells:
        if c.status in ("failed", "timeout"):
            print(f"{c.builder} {c.workload} {c.mode} {c.scenario}: {c.error[:300]}")

    args.results_dir.mkdir(parents=True, exist_ok=True)
    result_path = args.results_dir / f"{stamp}.json"
    doc = {
        "timestamp": stamp,
        "host": {"machine": platform.machine(), "kernel": platform.release(), "cpus": os.cpu_count(),
                 "python": platform.python_version()},
        "git": git_head(),
        "versions": versions,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "notes": notes,
        "memory_note": "pybuild: ru_maxrss of the process tree (largest single process, wait4); "
                       "tree_peak_kb: sampled sum of VmRSS over the tree. buildkit: dockerd VmHWM "
                       "minus its RSS before the build (clear_refs reset), the docker client's "
                       "ru_maxrss is in runs[].maxrss_kb.",
        "rows": [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows],
        "cells": [{**asdict(c), "median_s": c.median} for c in cells],
        "logs": str(logs),
    }
    result_path.write_text(json.dumps(doc, indent=1))
    print(f"\nresults: {result_path}\nlogs: {logs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
