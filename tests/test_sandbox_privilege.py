"""A RUN step never holds host privilege (issue 6, "The sandbox"): each test is named after the
attack, runs it in a real RUN step as root AND as the unprivileged CI user, and asserts both the
refusal and that the host is unchanged. The seccomp filter is also checked unit-wise in a Python
child (the busybox test base has no Python)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, UNPRIV_USER, make_context

sys.path.insert(0, str(REPO))

from builder.sandbox import nsinit  # noqa: E402
from builder.sandbox.linux import DEFAULT_RUN_CAPS, cap_mask  # noqa: E402
from builder.sandbox.spec import PROTECTIONS, RootFs, SpecError, StepSpec  # noqa: E402

pytestmark = pytest.mark.integration
DEFAULT_CAPS_HEX = "00000000a80425fb"      # BuildKit's / Docker's default CapBnd of a RUN step


@pytest.fixture(params=["root", "unprivileged"])
def who(request, unpriv_user) -> str | None:
    """None: the build runs as root; else the unprivileged CI user's name."""
    return None if request.param == "root" else unpriv_user


def run_step(pybuild, workdir: Path, base_layout: Path, who: str | None, script: str,
             files: dict[str, str] | None = None, run_flags: str = "") -> dict[str, str]:
    """Build `FROM base` + one RUN of `script` (a file bound read-only at /t.sh) and return what
    the script printed as `KEY=value` lines (`#N ` progress prefixes removed)."""
    name = who or "root"
    ctx = make_context(workdir / f"ctx-{name}", {"Dockerfile": f"FROM base\nRUN {run_flags} "
                                                 "--mount=type=bind,source=t.sh,target=/t.sh sh /t.sh\n",
                                                 "t.sh": script, **(files or {})}, owner=who)
    r = pybuild("build", str(ctx), "--build-context", f"base=oci-layout://{base_layout}:latest",
                "--progress", "plain", "--no-cache", user=who, root=workdir / f"root-{name}")
    assert r.returncode == 0, r.stderr
    out: dict[str, str] = {}
    for line in r.stderr.splitlines():
        m = re.match(r"#\d+ ([A-Za-z_]+)=(.*)$", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def test_capabilities_are_buildkit_default_set_no_sys_admin_no_new_privs(pybuild, workdir, base_layout, who):
    out = run_step(pybuild, workdir, base_layout, who, r"""
for k in CapInh CapPrm CapEff CapBnd CapAmb NoNewPrivs Seccomp; do
  echo "$k=$(sed -n "s/^$k:[[:space:]]*//p" /proc/self/status)"
done
echo "APP=$(su -s /bin/sh app -c 'sed -n "s/^CapEff:[[:space:]]*//p;s/^CapBnd:[[:space:]]*//p" /proc/self/status' | tr '\n' ,)"
""")
    assert (out["CapBnd"], out["CapPrm"], out["CapEff"]) == (DEFAULT_CAPS_HEX,) * 3
    assert int(DEFAULT_CAPS_HEX, 16) == cap_mask(DEFAULT_RUN_CAPS)
    assert (out["CapInh"], out["CapAmb"]) == ("0" * 16, "0" * 16)
    assert (out["NoNewPrivs"], out["Seccomp"]) == ("1", "2")
    # a non-root USER holds nothing, and cannot get back what the bounding set lost
    assert out["APP"] == f"{'0' * 16},{DEFAULT_CAPS_HEX},"


def test_remount_of_readonly_binds_and_new_mounts_are_refused(pybuild, workdir, base_layout, who):
    script = r"""
mount -o remount,rw /t.sh 2>/dev/null; echo "REMOUNT_BIND=$?"
mount -o remount,rw,bind /etc/hosts 2>/dev/null; echo "REMOUNT_HOSTS=$?"
echo poisoned 2>/dev/null >> /t.sh; echo "WRITE_BIND=$?"
echo poisoned 2>/dev/null >> /etc/hosts; echo "WRITE_HOSTS=$?"
mount -t tmpfs none /tmp 2>/dev/null; echo "TMPFS=$?"
umount /proc 2>/dev/null; echo "UMOUNT_PROC=$?"
umount -l /etc/hosts 2>/dev/null; echo "UMOUNT_HOSTS=$?"
mount -o remount,rw /sys 2>/dev/null; echo "REMOUNT_SYS=$?"
touch /sys/pybuild-test 2>/dev/null; echo "WRITE_SYS=$?"
unshare -m true 2>/dev/null; echo "UNSHARE_M=$?"
"""
    out = run_step(pybuild, workdir, base_layout, who, script)
    refused = ("REMOUNT_BIND", "REMOUNT_HOSTS", "WRITE_BIND", "WRITE_HOSTS", "TMPFS", "UMOUNT_PROC",
               "UMOUNT_HOSTS", "REMOUNT_SYS", "WRITE_SYS", "UNSHARE_M")
    assert {k: out.get(k) for k in refused if out.get(k) == "0"} == {}, out
    assert (workdir / f"ctx-{who or 'root'}" / "t.sh").read_text() == script    # the bound host file
    assert not Path("/sys/pybuild-test").exists()


def test_host_sysctls_core_pattern_and_max_map_count_cannot_be_written(pybuild, workdir, base_layout, who):
    core, maps = Path("/proc/sys/kernel/core_pattern"), Path("/proc/sys/vm/max_map_count")
    before = (core.read_text(), maps.read_text())
    try:
        out = run_step(pybuild, workdir, base_layout, who, f"""
echo '|/tmp/pybuild-pwned %p' 2>/dev/null > /proc/sys/kernel/core_pattern; echo "CORE=$?"
echo {int(before[1]) + 1} 2>/dev/null > /proc/sys/vm/max_map_count; echo "MAPS=$?"
echo 1 2>/dev/null > /proc/sys/kernel/sysrq; echo "SYSRQ=$?"
echo b 2>/dev/null > /proc/sysrq-trigger; echo "TRIGGER=$?"
grep -c ' /proc/sys ro,' /proc/self/mountinfo | sed 's/^/PROC_SYS_RO=/'
""")
        assert "0" not in (out["CORE"], out["MAPS"], out["SYSRQ"], out["TRIGGER"]), out
        assert out["PROC_SYS_RO"] == "1"
        assert (core.read_text(), maps.read_text()) == before
    finally:     # never leave a changed host behind, even when the protection failed
        for p, v in zip((core, maps), before):
            if p.read_text() != v:
                p.write_text(v)


def test_masked_proc_and_sys_files_show_no_host_content(pybuild, workdir, base_layout, who):
    out = run_step(pybuild, workdir, base_layout, who, r"""
for f in kcore keys timer_list sched_debug interrupts latency_stats; do
  echo "$f=$(cat /proc/$f 2>/dev/null | wc -c)"
done
echo "acpi=$(ls -A /proc/acpi 2>/dev/null | wc -l)"
echo "firmware=$(ls -A /sys/firmware 2>/dev/null | wc -l)"
touch /proc/acpi/x 2>/dev/null; echo "WRITE_ACPI=$?"
echo "MOUNTS=$(awk '{print $5}' /proc/self/mountinfo | tr '\n' ' ')"
""")
    for f in ("kcore", "keys", "timer_list", "sched_debug", "interrupts", "latency_stats"):
        assert out[f] == "0", (f, out)
    assert (out["acpi"], out["firmware"]) == ("0", "0")
    assert out["WRITE_ACPI"] != "0"
    mounts = set(out["MOUNTS"].split())
    for p in ("/proc/keys", "/proc/timer_list", "/proc/interrupts", "/proc/acpi", "/sys/firmware",
              "/proc/kcore", "/proc/scsi", "/proc/sched_debug"):
        if os.path.exists(p):      # what this kernel has is masked by a mount
            assert p in mounts, (p, mounts)
    for p in ("/proc/sys", "/proc/bus", "/proc/fs", "/proc/irq"):
        if os.path.exists(p):
            assert p in mounts, (p, mounts)


def test_new_user_and_network_namespaces_are_refused_in_a_step(pybuild, workdir, base_layout, who):
    out = run_step(pybuild, workdir, base_layout, who, r"""
unshare -U true 2>/dev/null; echo "USER=$?"
unshare -n true 2>/dev/null; echo "NET=$?"
unshare -p -f true 2>/dev/null; echo "PID=$?"
unshare -r true 2>/dev/null; echo "MAPROOT=$?"
nsenter -t 1 -U true 2>/dev/null; echo "NSENTER=$?"
""")
    assert {k: v for k, v in out.items() if v == "0"} == {}, out


SECCOMP_CHILD = r"""
import ctypes, errno, json, os, sys, threading
sys.path.insert(0, %(repo)r)
from builder.sandbox import linux
f = linux.SeccompFilter()
linux.set_no_new_privs()
f.load()
libc = ctypes.CDLL(None, use_errno=True)
NR = {"keyctl": 250, "add_key": 248, "request_key": 249, "bpf": 321, "perf_event_open": 298,
      "userfaultfd": 323, "init_module": 175, "kexec_load": 246, "open_by_handle_at": 304,
      "setns": 308, "swapon": 167, "reboot": 169, "clone3": 435, "io_uring_setup": 425,
      "fsopen": 430}
res = {}
for name, nr in NR.items():
    ctypes.set_errno(0)
    rc = libc.syscall(nr, 0, 0, 0, 0, 0)
    res[name] = errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno())) if rc < 0 else "allowed"
for name, flag in (("unshare_user", linux.CLONE_NEWUSER), ("unshare_net", linux.CLONE_NEWNET),
                   ("unshare_mount", linux.CLONE_NEWNS)):
    try:
        linux.unshare(flag); res[name] = "allowed"
    except OSError as e:
        res[name] = errno.errorcode[e.errno]
try:
    linux.mount("none", "/tmp", "tmpfs"); res["mount"] = "allowed"
except OSError as e:
    res["mount"] = errno.errorcode[e.errno]
t = threading.Thread(target=lambda: res.update(thread="ok")); t.start(); t.join()
pid = os.fork()
if pid == 0:
    os._exit(7)
res["fork"] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
print(json.dumps(res))
"""


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="syscall numbers of x86_64")
@pytest.mark.parametrize("as_user", [None, UNPRIV_USER])
def test_seccomp_refuses_keyring_bpf_perf_kexec_modules_and_namespaces(as_user, unpriv_user):
    code = SECCOMP_CHILD % {"repo": str(REPO)}
    argv = [sys.executable, "-S", "-E", "-c", code]
    if as_user:
        argv = ["runuser", "-u", as_user, "--"] + argv
    p = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd="/tmp")
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)
    assert res.pop("clone3") == "ENOSYS"            # the C library falls back to clone, which is checked
    assert (res.pop("thread"), res.pop("fork")) == ("ok", 7)
    assert res == dict.fromkeys(res, "EPERM")


def test_protection_refused_by_the_environment_fails_the_step_naming_it():
    spec = StepSpec(mountpoint="/m", rootfs=RootFs(type="bind", path="/p"), args=("true",), env=(),
                    idmap_size=1, setgroups=False)

    def refused() -> None:
        raise OSError(1, "cannot load libseccomp.so.2")
    with pytest.raises(nsinit.SetupError, match=r"^seccomp: .*libseccomp"):
        nsinit._protect("seccomp", spec, refused)
    waived = StepSpec.from_json(StepSpec(**{**{k: getattr(spec, k) for k in spec.__dataclass_fields__},
                                            "relaxed": ("seccomp",)}).to_json())
    assert waived.relaxed == ("seccomp",)
    assert nsinit._protect("seccomp", waived, refused) is None
    assert set(PROTECTIONS) == {"capabilities", "masked-paths", "network", "no-new-privs", "seccomp"}
    bad = json.loads(spec.to_json())
    bad["relaxed"] = ["apparmor"]
    with pytest.raises(SpecError, match="unknown protection"):
        StepSpec.from_json(json.dumps(bad))


@pytest.mark.parametrize("snapshotter", ["native", "overlay"])
def test_readonly_bind_from_stage_cannot_be_remounted_to_poison_the_stored_snapshot(
        pybuild, workdir, base_layout, who, snapshotter):
    """The copying snapshotter binds a stage's stored snapshot: with SYS_ADMIN a step could
    remount it read-write and change `FROM` for every later build (cache poisoning)."""
    name = f"{who or 'root'}-{snapshotter}"
    stage = "FROM base AS x\nRUN echo clean > /f\n"
    attack = (stage + "FROM base\nRUN --mount=type=bind,from=x,target=/x "
              "mount -o remount,rw /x 2>/dev/null; echo \"REMOUNT=$?\"; "
              "mount -o remount,rw,bind /x 2>/dev/null; echo \"REMOUNT_BIND=$?\"; "
              "echo poison 2>/dev/null > /x/f; echo \"WRITE=$?\"; echo \"AFTER=$(cat /x/f)\"\n")
    later = stage + "FROM x\nRUN echo \"LATER=$(cat /f)\"\n"
    out: dict[str, str] = {}
    for i, df in enumerate((attack, later)):      # the second build reuses x's stored snapshot
        ctx = make_context(workdir / f"ctx-{name}-{i}", {"Dockerfile": df}, owner=who)
        r = pybuild("build", str(ctx), "--build-context", f"base=oci-layout://{base_layout}:latest",
                    "--progress", "plain", user=who, root=workdir / f"root-{name}",
                    env={"PYBUILD_SNAPSHOTTER": snapshotter})
        assert r.returncode == 0, r.stderr
        out.update(re.findall(r"#\d+ ([A-Z_]+)=(.*)", r.stderr))
    assert "0" not in (out["REMOUNT"], out["REMOUNT_BIND"], out["WRITE"]), out
    assert out["AFTER"] == out["LATER"] == "clean"


def test_workdir_in_proc_self_fd_gives_no_host_directory_cve_2024_21626(pybuild, workdir, base_layout, who):
    """runc CVE-2024-21626: a WORKDIR under /proc/self/fd reached a host directory through a
    leaked fd. Every fd above 2 is closed before the step's chdir, so nothing leaks."""
    name = who or "root"
    outs = []
    for fd in range(3, 9):
        ctx = make_context(workdir / f"ctx-{name}-{fd}", {"Dockerfile": f"FROM base\nWORKDIR /proc/self/fd/{fd}\n"
                                                         "RUN echo \"CWD=$(ls -a ../../.. | tr '\\n' ' ')\"\n"},
                           owner=who)
        r = pybuild("build", str(ctx), "--build-context", f"base=oci-layout://{base_layout}:latest",
                    "--progress", "plain", "--no-cache", user=who, root=workdir / f"root-{name}")
        outs.append((fd, r.returncode, r.stderr[-400:]))
        if r.returncode == 0:      # only if the step saw a directory: never the host's root
            assert "CWD=" in r.stderr
            assert "pybuild" not in r.stderr.split("CWD=")[1].split("\n")[0]
    assert all(rc != 0 for _, rc, _ in outs), outs


def test_id_outside_the_subordinate_range_is_not_reported_as_no_range():
    from builder.errors import IdMappingError
    from builder.sandbox.userns import IdMap, require_ids
    with pytest.raises(IdMappingError) as e:
        require_ids(IdMap(size=65536, setgroups=True, user="u"), 1000, 70000, what="USER big")
    assert "needs id(s) 70000" in str(e.value) and "0-65535" in str(e.value)
    assert "no subordinate id range" not in str(e.value) and "usermod" not in str(e.value)
    with pytest.raises(IdMappingError, match="no subordinate id range"):
        require_ids(IdMap(size=1, setgroups=False, user="u"), 1000, what="USER app")
