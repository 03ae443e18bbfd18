"""A RUN step's own network namespace with outbound access (issue 6, "Network").

The default network of a RUN step is a network namespace of its own, connected to the outside by
slirp4netns (Debian package `slirp4netns`), a user-mode TCP/IP stack: the step sees a tap device
`tap0` (10.0.2.100/24, gateway 10.0.2.2, DNS 10.0.2.3) and reaches the world through the
worker's sockets, but never the host's loopback (`--disable-host-loopback`) nor the host's
abstract unix sockets (those belong to the host's network namespace). slirp4netns rather than
pasta: bookworm's pasta (0.0~git20230309) predates the options to cut the host loopback off
reliably and to report readiness on an fd; slirp4netns 1.2.0 has `--disable-host-loopback`,
`--ready-fd` and `--exit-fd`, and is what rootless podman/BuildKit used for years.

Contract: `start_stack(pid)` is called by the worker (root in the build's user namespace) once
the step's init `pid` has unshared its network namespace (`wait_own_netns`); it returns a running
`NetStack` once the tap device is configured, or raises `SandboxError` naming the package and
`pybuild doctor`. `NetStack.close()` ends the helper; the helper also exits by itself when the
worker dies (its exit fd is the write end of a pipe only the worker holds).
"""
from __future__ import annotations

import os
import select
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass

from builder.errors import SandboxError

HELPER = "slirp4netns"
DNS = "10.0.2.3"
READY_TIMEOUT = 10.0
_HINT = ("install Debian's slirp4netns package (/dev/net/tun must be usable by the building user, "
         "mode 0666 as udev makes it); `pybuild doctor` checks it; `--sandbox-relax network` "
         "runs such steps in the host's network namespace instead")


def find_helper() -> str | None:
    """The slirp4netns executable, or None when it is not installed."""
    return shutil.which(HELPER)


def stack_problem() -> str | None:
    """For `pybuild doctor`: why a default-network RUN step would fail here, with the fix; None
    when slirp4netns is installed and /dev/net/tun is usable by this user."""
    if find_helper() is None:
        return "slirp4netns not found: apt-get install slirp4netns (or --sandbox-relax network)"
    if not os.path.exists("/dev/net/tun"):
        return ("/dev/net/tun is missing: modprobe tun (in a container: pass the device, "
                "e.g. docker run --device /dev/net/tun)")
    if os.stat("/dev/net/tun").st_mode & 0o006 != 0o006:
        # slirp4netns runs as root of the build's user namespace, which is never host root (as
        # root a subordinate range): only the "other" bits let it open the device
        return ("/dev/net/tun is not read-writable by all: chmod 0666 /dev/net/tun "
                "(udev's default mode for it)")
    return None


def resolv_conf(host: bytes) -> bytes:
    """The step's /etc/resolv.conf: the stack's DNS, keeping the host's search/options lines."""
    keep = [ln for ln in host.splitlines() if ln.split()[:1] in ([b"search"], [b"domain"], [b"options"])]
    return b"\n".join([b"nameserver " + DNS.encode(), *keep]) + b"\n"


def wait_own_netns(pid: int, timeout: float = READY_TIMEOUT) -> bool:
    """Wait until process `pid` is in a network namespace other than the caller's (the init has
    unshared it): True; False when `pid` ended first (its own report says why); SandboxError
    when the timeout passes first."""
    mine = os.readlink("/proc/self/ns/net")
    deadline = time.monotonic() + timeout
    delay = 0.0002
    while True:
        try:
            if os.readlink(f"/proc/{pid}/ns/net") != mine:
                return True
        except OSError:
            return False
        if time.monotonic() > deadline:
            raise SandboxError("cannot set up the RUN sandbox: the step's init did not make its "
                               "network namespace in time")
        time.sleep(delay)
        delay = min(delay * 2, 0.01)


@dataclass(slots=True, kw_only=True)
class NetStack:
    """A running slirp4netns serving one step's network namespace."""
    proc: subprocess.Popen[bytes]
    exit_w: int

    def close(self) -> None:
        """End the helper: SIGKILL at once (it keeps no state worth a clean exit; its exit-fd
        loop takes up to ~60 ms to notice a closed fd) and reap it in a daemon thread (its exit
        waits for the kernel to unregister tap0, tens of ms the step need not wait for)."""
        if self.proc.poll() is None:
            self.proc.kill()
            threading.Thread(target=self.proc.wait, name="netstack-reaper", daemon=True).start()
        if self.exit_w >= 0:
            os.close(self.exit_w)
            self.exit_w = -1


def start_stack(pid: int, exe: str, timeout: float = READY_TIMEOUT) -> NetStack:
    """Start slirp4netns for the network namespace of `pid` and wait until it configured tap0
    (address, route, up). SandboxError, with the helper's own message, when it fails."""
    ready_r, ready_w = os.pipe()
    exit_r, exit_w = os.pipe()
    argv = [exe, "--configure", "--mtu=65520", "--disable-host-loopback",
            f"--ready-fd={ready_w}", f"--exit-fd={exit_r}", str(pid), "tap0"]
    err = tempfile.TemporaryFile()
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=err, pass_fds=(ready_w, exit_r), close_fds=True)
    except OSError as e:
        err.close()
        for fd in (ready_r, ready_w, exit_r, exit_w):
            os.close(fd)
        raise SandboxError(f"cannot start the RUN step's network stack {exe}: {e}; {_HINT}") from None
    os.close(ready_w)
    os.close(exit_r)
    stack = NetStack(proc=proc, exit_w=exit_w)
    try:
        ok = bool(select.select([ready_r], [], [], timeout)[0]) and os.read(ready_r, 1) == b"1"
    finally:
        os.close(ready_r)
    if not ok:
        stack.close()
        err.seek(0)
        text = err.read(65536).decode(errors="replace").strip()
        said = "; ".join(text.splitlines()[-5:]) if text else f"no answer in {timeout:.0f} s"
        raise SandboxError(f"cannot set up the RUN step's network: {HELPER} failed ({said}); {_HINT}")
    err.close()
    return stack
