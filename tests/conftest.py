"""Shared fixtures: the real registry, a busybox base image pushed to it, pybuild runners as root
and as an unprivileged user; where the shared test data is (`shared_dir()`, `shared_path()`).

No test skips: a test that cannot find its data or tools fails, with a message that says what is
missing (a skip on CI would hide a missing install step). `PYBUILD_ALLOW_SKIPS=1` lets a
developer on a machine without them see skips instead."""
from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from registry_fixture import registry  # noqa: E402,F401  (session fixture)

UNPRIV_USER = "pybuild-ci"
VENV_BIN = Path(sys.executable).parent
MISSING_CASES = "<conformance cases missing>"


def shared_dir() -> Path:
    """The shared test data folder (the conformance suite): `$PYBUILD_SHARED`, else `../shared`
    beside the checkout, as tests/run-all.sh finds it. Not checked: see shared_path()."""
    env = os.environ.get("PYBUILD_SHARED")
    return Path(env) if env else REPO.parent / "shared"


def shared_path(*parts: str) -> Path:
    """A file or folder of the shared data. Fails the calling test (never skips) when missing."""
    p = shared_dir().joinpath(*parts)
    if not p.exists():
        pytest.fail(f"shared test data missing: {p} (set PYBUILD_SHARED to the shared folder, or put it "
                    f"at {REPO.parent / 'shared'} beside the checkout)", pytrace=False)
    return p


def conformance_case_names() -> list[str]:
    """Names of the shared conformance cases (folders with a Dockerfile), for parametrize at
    collection time. When the data is missing: one name, MISSING_CASES, whose test fails in
    `shared_path("conformance", "cases", name)` (an empty parameter set would only skip)."""
    cases = shared_dir() / "conformance" / "cases"
    names = sorted(p.name for p in cases.glob("*") if (p / "Dockerfile").is_file()) if cases.is_dir() else []
    return names or [MISSING_CASES]


def _no_skip(report, nodeid: str) -> None:  # type: ignore[no-untyped-def]
    """A skipped test (or module) is reported as failed, its reason kept, unless PYBUILD_ALLOW_SKIPS=1."""
    if report.skipped and not hasattr(report, "wasxfail") and os.environ.get("PYBUILD_ALLOW_SKIPS") != "1":
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = (f"{nodeid}: skipped, and the suite allows no skip ({reason}); install what it "
                           "needs (see .ci/run), or set PYBUILD_ALLOW_SKIPS=1 to allow it on this machine")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):  # type: ignore[no-untyped-def]
    outcome = yield
    _no_skip(outcome.get_result(), item.nodeid)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):  # type: ignore[no-untyped-def]
    outcome = yield
    _no_skip(outcome.get_result(), collector.nodeid)


def pybuild_cmd() -> list[str]:
    exe = VENV_BIN / "pybuild"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "builder.cli"]


@dataclass
class Run:
    returncode: int
    stdout: bytes
    stderr: str


def _ensure_user(name: str, subid_start: int | None) -> None:
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", name], check=True)
    for f in ("/etc/subuid", "/etc/subgid"):
        lines = [l for l in Path(f).read_text().splitlines() if not l.startswith(name + ":")] if Path(f).exists() else []
        if subid_start is not None:
            lines.append(f"{name}:{subid_start}:65536")
        Path(f).write_text("".join(l + "\n" for l in lines))


@pytest.fixture(scope="session")
def unpriv_user() -> str:
    """An unprivileged user with an /etc/subuid + /etc/subgid range (what .ci/run creates)."""
    if os.geteuid() != 0:
        pytest.fail("needs root to create the unprivileged test user (the suite runs as root)", pytrace=False)
    _ensure_user(UNPRIV_USER, 200000)
    return UNPRIV_USER


@pytest.fixture(scope="session")
def norange_user() -> str:
    """An unprivileged user without any subordinate id range."""
    if os.geteuid() != 0:
        pytest.fail("needs root to create the unprivileged test user (the suite runs as root)", pytrace=False)
    _ensure_user("pybuild-norange", None)
    return "pybuild-norange"


@pytest.fixture
def workdir(tmp_path_factory) -> Path:
    """A temp dir outside /root that the unprivileged user can use too."""
    d = Path(tempfile.mkdtemp(prefix="pybuild-test-", dir="/tmp"))
    os.chmod(d, 0o777)
    yield d
    subprocess.run(["rm", "-rf", str(d)], check=False)


@pytest.fixture
def pybuild(workdir):
    """Run the pybuild CLI: pybuild(*args, user=None, root=None, env=None, input=None)."""
    def run(*args: str, user: str | None = None, root: Path | None = None, env: dict | None = None,
            timeout: int = 300) -> Run:
        e = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/tmp",
             "PYBUILD_ROOT": str(root or workdir / "root")}
        e.update(env or {})
        cmd = pybuild_cmd() + list(args)
        if user:
            cmd = ["runuser", "-u", user, "--", "env", *(f"{k}={v}" for k, v in e.items())] + cmd
            p = subprocess.run(cmd, capture_output=True, timeout=timeout, cwd="/tmp")
        else:
            p = subprocess.run(cmd, capture_output=True, timeout=timeout, env={**os.environ, **e}, cwd="/tmp")
        return Run(p.returncode, p.stdout, p.stderr.decode(errors="replace"))
    return run


@pytest.fixture(scope="session")
def base_layout(tmp_path_factory) -> Path:
    """An OCI layout with the busybox base image (testdata/make-base.py), tag `latest`."""
    top = Path(tempfile.mkdtemp(prefix="pybuild-base-", dir="/tmp"))
    os.chmod(top, 0o755)
    d = top / "layout"
    subprocess.run([sys.executable, str(REPO / "testdata" / "make-base.py"), str(d)], check=True,
                   capture_output=True)
    subprocess.run(["chmod", "-R", "a+rX", str(top)], check=False)
    yield d
    shutil.rmtree(top, ignore_errors=True)


@pytest.fixture(scope="session")
def base_image(registry, base_layout) -> str:
    """The busybox base pushed to the test registry; returns its reference."""
    ref = f"{registry}/test/busybox:1"
    subprocess.run(["skopeo", "copy", "--quiet", f"oci:{base_layout}:latest", f"docker://{ref}",
                    "--dest-tls-verify=false"], check=True, capture_output=True)
    return ref


def make_context(root: Path, files: dict[str, str | bytes], owner: str | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content.encode() if isinstance(content, str) else content)
    if owner:
        shutil.chown(root, owner, owner)
        subprocess.run(["chown", "-R", f"{owner}:{owner}", str(root)], check=True)
    return root
