"""Run the shared conformance harness and gate on tests/conformance-known-failures.txt.

Fails when a case fails that is not listed, and when a listed case passes (the list only shrinks).
Usage: conformance_gate.py CONFORMANCE_DIR KNOWN_FAILURES_FILE [CASE...]
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path


def read_known(path: Path) -> dict[str, str]:
    known = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, reason = line.partition(" ")
        known[name] = reason.strip(" -:")
    return known


def main() -> int:
    conf, known_file = Path(sys.argv[1]), Path(sys.argv[2])
    cases = sys.argv[3:] or [str(conf / "cases")]
    known = read_known(known_file)
    with tempfile.NamedTemporaryFile(suffix=".json") as rep:
        proc = subprocess.run([sys.executable, str(conf / "harness.py"), "check", "--json", rep.name,
                               "--timeout", "300", *cases], capture_output=True, text=True)
        sys.stdout.write("".join(l + "\n" for l in proc.stdout.splitlines()[:-1]))
        try:
            report = json.loads(Path(rep.name).read_text())
        except ValueError:
            print(proc.stderr, file=sys.stderr)
            print("conformance gate: the harness wrote no report", file=sys.stderr)
            return 1
    passed = [r["case"] for r in report if r["pass"]]
    failed = [r["case"] for r in report if not r["pass"]]
    unexpected = [c for c in failed if c not in known]
    fixed = [c for c in passed if c in known]
    print(f"conformance summary - {len(passed)} cases pass, {len(failed)} fail "
          f"({len(failed) - len(unexpected)} of them listed as known)")
    for c in unexpected:
        print(f"conformance gate: {c} fails and is not in {known_file.name}")
    for c in fixed:
        print(f"conformance gate: {c} passes now: remove it from {known_file.name}")
    return 1 if unexpected or fixed else 0


if __name__ == "__main__":
    sys.exit(main())
