"""A RUN step's network (issue 6, "Network"): by default its own network namespace behind
slirp4netns, so it cannot reach the host's loopback services or abstract unix sockets, yet reaches
the outside; `--network=none` has only lo; `--network=host` (with `--allow network.host`) is the
host's. Each attack runs as root AND as the unprivileged CI user, and asserts both the refusal and
that the host service saw nothing."""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

from conftest import make_context

pytestmark = pytest.mark.integration
SNAPSHOTTERS = ("overlay", "native")


@pytest.fixture(params=["root", "unprivileged"])
def who(request, unpriv_user) -> str | None:
    """None: the build runs as root; else the unprivileged CI user's name."""
    return None if request.param == "root" else unpriv_user


class HostServer:
    """A listening socket on the host (TCP at `addr`, or an abstract unix socket `@name`) that
    answers "hello" and counts the connections it accepted."""

    def __init__(self, family: int, addr: object) -> None:
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(addr)
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.accepted = 0
        self._stop = False
        self._t = threading.Thread(target=self._serve, daemon=True)
        self._t.start()

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def _serve(self) -> None:
        while not self._stop:
            try:
                c, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            try:
                c.sendall(b"hello-from-host\n")
            finally:
                c.close()

    def close(self) -> None:
        self._stop = True
        self._t.join(timeout=5)
        self.sock.close()


@pytest.fixture
def loopback_server():
    s = HostServer(socket.AF_INET, ("127.0.0.1", 0))
    yield s
    s.close()


@pytest.fixture
def abstract_server():
    name = f"pybuild-net-test-{uuid.uuid4().hex[:10]}"
    s = HostServer(socket.AF_UNIX, "\0" + name)
    s.name = name       # type: ignore[attr-defined]
    yield s
    s.close()


def host_ip() -> str:
    """A non-loopback IPv4 address of the host (from `ip -4 addr`)."""
    out = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        f = line.split()
        if len(f) >= 4 and f[1] != "lo" and not f[3].startswith("127."):
            return f[3].split("/")[0]
    pytest.fail("the host has no non-loopback IPv4 address (`ip -4 addr`): the outbound test needs "
                "one to listen on (add one, e.g. a dummy interface)")


def run_step(pybuild, workdir: Path, base_layout: Path, who: str | None, script: str, *,
             run_flags: str = "", build_flags: tuple[str, ...] = (), env: dict | None = None,
             ok: bool = True):
    """Build `FROM base` + one RUN of `script`; the `KEY=value` lines it printed (or, when not
    `ok`, the failed run itself)."""
    name = f"{who or 'root'}-{uuid.uuid4().hex[:6]}"
    ctx = make_context(workdir / f"ctx-{name}", {"Dockerfile": f"FROM base\nRUN {run_flags} "
                                                 "--mount=type=bind,source=t.sh,target=/t.sh sh /t.sh\n",
                                                 "t.sh": script}, owner=who)
    r = pybuild("build", str(ctx), "--build-context", f"base=oci-layout://{base_layout}:latest",
                "--progress", "plain", "--no-cache", *build_flags, user=who, root=workdir / f"root-{name}",
                env=env)
    if not ok:
        return r
    assert r.returncode == 0, r.stderr
    out: dict[str, str] = {}
    for line in r.stderr.splitlines():
        m = re.match(r"#\d+ ([A-Za-z_]+)=(.*)$", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def _no_slirp_left(timeout: float = 5.0) -> bool:
    """No slirp4netns process is left within `timeout` s (a killed one takes tens of ms to exit
    while the kernel unregisters its tap device)."""
    deadline = time.monotonic() + timeout
    while subprocess.run(["pgrep", "-x", "slirp4netns"], capture_output=True).returncode == 0:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.mark.parametrize("snapshotter", SNAPSHOTTERS)
def test_run_cannot_reach_a_host_loopback_service(pybuild, workdir, base_layout, who, snapshotter,
                                                  loopback_server, abstract_server):
    port = loopback_server.port
    out = run_step(pybuild, workdir, base_layout, who, f"""
echo "TCP=$(nc -w 3 127.0.0.1 {port} </dev/null 2>&1; echo rc=$?)" | tr '\\n' ' '; echo
echo "WGET=$(wget -T 3 -q -O- http://127.0.0.1:{port}/ 2>&1; echo rc=$?)" | tr '\\n' ' '; echo
echo "ABSTRACT=$(grep -c {abstract_server.name} /proc/net/unix)"
echo "LINKS=$(ls /sys/class/net | tr '\\n' ,)"
""", env={"PYBUILD_SNAPSHOTTER": snapshotter})
    assert "hello-from-host" not in out["TCP"] and not out["TCP"].endswith("rc=0"), out
    assert "hello-from-host" not in out["WGET"] and not out["WGET"].endswith("rc=0"), out
    assert out["ABSTRACT"] == "0", "the host's abstract unix socket is visible in the step"
    assert out["LINKS"] == "lo,tap0,", out
    assert loopback_server.accepted == 0, "the host loopback service saw a connection from the step"
    assert abstract_server.accepted == 0
    assert _no_slirp_left(), "the step's slirp4netns outlived the build"


def test_run_default_network_reaches_outbound_and_dns_is_the_stack(pybuild, workdir, base_layout, who):
    ip = host_ip()
    srv = HostServer(socket.AF_INET, (ip, 0))
    try:
        out = run_step(pybuild, workdir, base_layout, who, f"""
echo "TCP=$(nc -w 5 {ip} {srv.port} </dev/null)"
echo "NS=$(sed -n 's/^nameserver //p' /etc/resolv.conf | tr '\\n' ,)"
echo "ROUTE=$(ip route | sed -n 's/^default via \\([^ ]*\\) dev \\([^ ]*\\).*/\\1 \\2/p')"
""")
    finally:
        srv.close()
    assert out["TCP"] == "hello-from-host", out
    assert srv.accepted == 1
    assert out["NS"] == "10.0.2.3,", out
    assert out["ROUTE"] == "10.0.2.2 tap0", out


def test_network_none_has_only_lo_and_reaches_nothing(pybuild, workdir, base_layout, who, loopback_server):
    ip = host_ip()
    srv = HostServer(socket.AF_INET, (ip, 0))
    try:
        out = run_step(pybuild, workdir, base_layout, who, f"""
echo "LINKS=$(ls /sys/class/net | tr '\\n' ,)"
echo "OUT=$(nc -w 3 {ip} {srv.port} </dev/null 2>/dev/null; echo rc=$?)"
echo "LO=$(nc -w 3 127.0.0.1 {loopback_server.port} </dev/null 2>/dev/null; echo rc=$?)"
""", run_flags="--network=none")
    finally:
        srv.close()
    assert out["LINKS"] == "lo,", out
    assert out["OUT"] != "rc=0" and out["LO"] != "rc=0", out
    assert srv.accepted == 0 and loopback_server.accepted == 0


def test_network_host_with_entitlement_still_reaches_the_host_loopback(pybuild, workdir, base_layout, who,
                                                                      loopback_server):
    out = run_step(pybuild, workdir, base_layout, who,
                   f'echo "TCP=$(nc -w 5 127.0.0.1 {loopback_server.port} </dev/null)"\n',
                   run_flags="--network=host", build_flags=("--allow", "network.host"))
    assert out["TCP"] == "hello-from-host", out
    assert loopback_server.accepted == 1


def _path_without_slirp(workdir: Path) -> str:
    """A PATH with every command of the host's PATH but slirp4netns."""
    d = workdir / "bin-noslirp"
    d.mkdir()
    for p in os.environ.get("PATH", "/usr/bin:/bin").split(":"):
        if not os.path.isdir(p):
            continue
        for name in os.listdir(p):
            if name != "slirp4netns" and not (d / name).exists():
                (d / name).symlink_to(os.path.join(p, name))
    os.chmod(d, 0o755)
    return str(d)


def test_run_without_slirp4netns_fails_naming_the_package_unless_relaxed(pybuild, workdir, base_layout, who):
    assert shutil.which("slirp4netns"), "slirp4netns must be installed for this suite (.ci/run)"
    env = {"PATH": _path_without_slirp(workdir)}
    r = run_step(pybuild, workdir, base_layout, who, "echo RAN=1\n", env=env, ok=False)
    assert r.returncode != 0
    assert "slirp4netns" in r.stderr and "pybuild doctor" in r.stderr, r.stderr
    assert "RAN=1" not in r.stderr
    out = run_step(pybuild, workdir, base_layout, who, 'echo "LINKS=$(ls /sys/class/net | tr \'\\n\' ,)"\n',
                   env=env, build_flags=("--sandbox-relax", "network"))
    assert "tap0" not in out["LINKS"] and out["LINKS"] != "lo,", out     # the host's namespace, waived


def test_run_default_network_resolves_names_and_fetches_from_the_debian_mirror(pybuild, workdir, base_layout, who):
    # what apt-get needs in a RUN: DNS through the stack (10.0.2.3) and HTTP to the mirror
    # (the mirror .ci/run installs from; the debootstrap apt-get install test is the issue's own)
    out = run_step(pybuild, workdir, base_layout, who, """
echo "ORIGIN=$(timeout 60 wget -q -O- http://deb.debian.org/debian/dists/bookworm/Release | sed -n 's/^Origin: //p')"
""")
    assert out["ORIGIN"] == "Debian", out
