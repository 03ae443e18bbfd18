"""The two builders under test, driven through their command lines.

Each builder gives: `command(workload, mode, out)` (argv + env for one build; mode "tar" writes
the final root filesystem as a tar to `out`, mode "image" tags the image into the builder's own
store), `reset()` (make the next build cold), `probe()` (None if usable, else why not) and
`version()`. Standard library only.
"""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
import time
from pathlib import Path

from workloads import Workload

TAG_PREFIX = "pybuild-bench/"
DOCKERD_CMD = ("dockerd", "--storage-driver=overlay2", "--iptables=false", "--bridge=none")


def _rmtree(path: Path) -> None:
    def onerror(func, p, exc):  # type: ignore[no-untyped-def]
        try:
            os.chmod(os.path.dirname(p), stat.S_IRWXU)
            os.chmod(p, stat.S_IRWXU)
        except OSError:
            pass
        func(p)
    if path.exists():
        shutil.rmtree(path, onerror=onerror)


class BuildKit:
    """BuildKit inside Docker Engine (`DOCKER_BUILDKIT=1 docker build`), RUN with --network=host.

    --network=host because the bench starts dockerd with --bridge=none, and pybuild's RUN steps
    use the host network by default too.
    """

    name = "buildkit"

    def __init__(self, docker: str, registry: str) -> None:
        self.docker = docker
        self.registry = registry

    def _docker(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self.docker, *args], check=check, capture_output=True, text=True,
                              env={**os.environ, "DOCKER_BUILDKIT": "1"})

    def probe(self) -> str | None:
        r = self._docker("info", "--format", "{{.ServerVersion}}", check=False)
        return None if r.returncode == 0 else (r.stderr.strip() or "docker info failed")

    def version(self) -> str:
        r = self._docker("version", "--format", "{{.Server.Version}}", check=False)
        return "docker " + (r.stdout.strip() or "?") + " (BuildKit built in)"

    def daemon_pid(self) -> int | None:
        try:
            return int(Path("/var/run/docker.pid").read_text().strip())
        except (OSError, ValueError):
            pass
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    if Path(f"/proc/{entry}/comm").read_text().strip() == "dockerd":
                        return int(entry)
                except OSError:
                    continue
        return None

    def reset(self) -> None:
        """Drop all build cache and the images the bench made or pulled (ours and the registry's)."""
        self._docker("builder", "prune", "-af")
        r = self._docker("image", "ls", "--format", "{{.Repository}}:{{.Tag}} {{.ID}}")
        ids = set()
        for line in r.stdout.splitlines():
            ref, _, image_id = line.partition(" ")
            if ref.startswith(TAG_PREFIX) or ref.startswith(self.registry + "/"):
                ids.add(image_id)
        if ids:
            self._docker("image", "rm", "-f", *sorted(ids), check=False)
        self._docker("image", "prune", "-f", check=False)

    def command(self, wl: Workload, mode: str, out: Path) -> tuple[list[str], dict[str, str]]:
        cmd = [self.docker, "build", "--network=host", "--progress=plain",
               "-f", str(wl.buildkit_dockerfile)]
        if mode == "tar":
            cmd += ["-o", f"type=tar,dest={out}"]
        else:
            cmd += ["-t", f"{TAG_PREFIX}{wl.name}:latest"]
        cmd.append(str(wl.context))
        return cmd, {**os.environ, "DOCKER_BUILDKIT": "1"}


def ensure_dockerd(docker: str, *, start: bool, log: Path) -> tuple[str | None, int | None]:
    """Make sure dockerd answers. Returns (reason it is unusable or None, pid if we started it)."""
    def answers() -> bool:
        return subprocess.run([docker, "info"], capture_output=True).returncode == 0
    if answers():
        return None, None
    if not start:
        return "dockerd is not running (and --no-start-dockerd)", None
    if shutil.which(DOCKERD_CMD[0]) is None:
        return "dockerd is not installed", None
    with open(log, "ab") as f:
        proc = subprocess.Popen(list(DOCKERD_CMD), stdout=f, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    for _ in range(300):
        if answers():
            return None, proc.pid
        if proc.poll() is not None:
            return f"dockerd exited with {proc.returncode}; see {log}", None
        time.sleep(0.1)
    return f"dockerd did not answer within 30 s; see {log}", proc.pid


def stop_dockerd(pid: int) -> None:
    """Stop the dockerd this bench started (SIGTERM, wait up to 20 s)."""
    try:
        os.kill(pid, 15)
    except ProcessLookupError:
        return
    for _ in range(200):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)


class Pybuild:
    """pybuild's CLI with PYBUILD_ROOT under the work dir (a fresh, empty root for cold builds)."""

    name = "pybuild"

    def __init__(self, exe: str, work: Path) -> None:
        self.exe = exe
        self.root = work / "pybuild-root"

    def probe(self) -> str | None:
        try:
            r = subprocess.run([self.exe, "--version"], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"cannot run {self.exe}: {e}"
        return None if r.returncode == 0 else f"`{self.exe} --version` failed: {r.stderr.strip()[-500:]}"

    def version(self) -> str:
        try:
            r = subprocess.run([self.exe, "--version"], capture_output=True, text=True, timeout=60)
            return r.stdout.strip() or r.stderr.strip()
        except (OSError, subprocess.TimeoutExpired):
            return "?"

    def reset(self) -> None:
        _rmtree(self.root)
        self.root.mkdir(parents=True)

    def command(self, wl: Workload, mode: str, out: Path) -> tuple[list[str], dict[str, str]]:
        cmd = [self.exe, "build", "--progress=plain", "-f", str(wl.pybuild_dockerfile), *wl.pybuild_args]
        if mode == "tar":
            cmd += ["--output", f"type=tar,dest={out}"]
        else:
            cmd += ["-t", f"{TAG_PREFIX}{wl.name}:latest"]
        cmd.append(str(wl.context))
        return cmd, {**os.environ, "PYBUILD_ROOT": str(self.root)}

