"""Package installs in RUN keep working under the hardened sandbox (issue 6, "How it is checked":
`apt-get update && apt-get install` from Debian's mirror in a base made locally with debootstrap,
as root and as the unprivileged user).

The base is `testdata/make-debian-base.py` (debootstrap --variant=minbase bookworm from the
machine's own apt mirror, cached under /var/tmp, so only the first run on a machine pays for it).
Each build runs with every step protection on (no `--sandbox-relax`): the test reads the step's
/proc/self/status to show the filter, no_new_privs and the capability set were in force while apt
ran, that apt dropped to its `_apt` user for downloads (no "unsandboxed" warning), and that the
installed programs are in the `-o type=tar` output. No skip: a missing debootstrap or an
unreachable mirror fails the test with the cause."""
from __future__ import annotations

import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from conftest import REPO, make_context

pytestmark = pytest.mark.integration
DEFAULT_CAPS_HEX = "00000000a80425fb"      # BuildKit's / Docker's default CapBnd of a RUN step
PACKAGES = ("hello", "jq")                  # small; jq pulls two libraries (libjq1, libonig5)
DOCKERFILE = f"""FROM base
RUN echo "STATUS $(sed -n 's/^\\(CapBnd\\|CapEff\\|NoNewPrivs\\|Seccomp\\):[[:space:]]*/\\1=/p' /proc/self/status | tr '\\n' ' ')"
RUN apt-get update && apt-get install -y --no-install-recommends {' '.join(PACKAGES)}
RUN hello && echo '{{"pkg": "jq-works"}}' | jq -r .pkg
"""


@pytest.fixture(scope="module")
def debian_base() -> Path:
    """The cached Debian bookworm OCI layout (tag `latest`); fails (never skips) when it cannot
    be made, with make-debian-base.py's message (debootstrap missing, mirror unreachable, …)."""
    try:
        p = subprocess.run([sys.executable, str(REPO / "testdata" / "make-debian-base.py")],
                           capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired:
        pytest.fail("testdata/make-debian-base.py took over 15 minutes (is the Debian mirror reachable?)",
                    pytrace=False)
    if p.returncode != 0:
        pytest.fail(f"cannot make the Debian base image (testdata/make-debian-base.py exit {p.returncode}):\n"
                    f"{p.stderr.strip()}", pytrace=False)
    return Path(p.stdout.strip().splitlines()[-1])


@pytest.fixture(params=["root", "unprivileged"])
def who(request, unpriv_user) -> str | None:
    """None: the build runs as root; else the unprivileged CI user's name."""
    return None if request.param == "root" else unpriv_user


@pytest.mark.parametrize("snapshotter", ["overlay", "native"])
def test_apt_get_install_in_run_works_under_hardened_sandbox(pybuild, workdir, debian_base, who, snapshotter):
    name = who or "root"
    ctx = make_context(workdir / f"ctx-{name}", {"Dockerfile": DOCKERFILE}, owner=who)
    out = workdir / f"out-{name}.tar"
    r = pybuild("build", str(ctx), "--build-context", f"base=oci-layout://{debian_base}:latest",
                "--progress", "plain", "-o", f"type=tar,dest={out}", user=who, root=workdir / f"root-{name}",
                env={"PYBUILD_SNAPSHOTTER": snapshotter}, timeout=240)
    mirror_hint = ("" if r.returncode == 0 else
                   "\n(if apt-get could not fetch: is the Debian mirror in the base's /etc/apt/sources.list "
                   "reachable from this machine?)")
    assert r.returncode == 0, f"apt-get install in RUN failed as {name} ({snapshotter}):\n{r.stderr[-6000:]}{mirror_hint}"
    # The steps ran with every protection: the capability set, no_new_privs, a seccomp filter.
    m = re.search(r"^#\d+ STATUS (.*)$", r.stderr, re.M)
    assert m, r.stderr[-3000:]
    status = dict(kv.split("=", 1) for kv in m.group(1).split())
    assert status == {"CapBnd": DEFAULT_CAPS_HEX, "CapEff": DEFAULT_CAPS_HEX, "NoNewPrivs": "1", "Seccomp": "2"}
    # Nothing fell back: apt dropped privileges to _apt for its downloads, no protection was waived.
    assert "unsandboxed" not in r.stderr, r.stderr[-3000:]
    assert not re.search(r"relax|without (the )?(seccomp|capabilities|no.new.privs|masked)", r.stderr, re.I), r.stderr
    # The installed programs ran in the next step, and are in the exported root filesystem.
    assert re.search(r"^#\d+ Hello, world!$", r.stderr, re.M) and re.search(r"^#\d+ jq-works$", r.stderr, re.M), \
        r.stderr[-3000:]
    with tarfile.open(out) as tf:
        names = set(tf.getnames())
    for path in ("usr/bin/hello", "usr/bin/jq", "var/lib/dpkg/info/hello.list", "var/lib/dpkg/info/jq.list"):
        assert path in names, f"{path} missing from the exported rootfs"
    assert any(re.match(r"usr/lib/[^/]+/libjq\.so", n) for n in names), "libjq (a dependency of jq) missing"
