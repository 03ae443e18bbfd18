"""pybuild doctor: each failure comes with its exact fix; the real machine passes."""
from __future__ import annotations

from pathlib import Path

from builder.doctor import Machine, check_cgroups, check_subids, check_userns, render, run_checks


def fake(tmp_path: Path, files: dict[str, str], *, uid: int = 1000, progs: tuple[str, ...] = ("newuidmap", "newgidmap"),
         seccomp_lib: bool = True) -> Machine:
    for rel, text in files.items():
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return Machine(proc=tmp_path / "proc", etc=tmp_path / "etc", cgroup=tmp_path / "cg", uid=uid,
                   which=lambda p: f"/usr/bin/{p}" if p in progs else None,
                   find_library=lambda n: "libseccomp.so.2" if seccomp_lib else None)


def test_ubuntu_apparmor_restriction_names_the_sysctl(tmp_path):
    m = fake(tmp_path, {"proc/sys/kernel/apparmor_restrict_unprivileged_userns": "1\n"})
    (c,) = check_userns(m)
    assert c.status == "fail" and "apparmor_restrict_unprivileged_userns=0" in c.fix


def test_disabled_user_namespaces_and_a_seccomp_filter(tmp_path):
    m = fake(tmp_path, {"proc/sys/user/max_user_namespaces": "0\n",
                        "proc/self/status": "Name:\tpython\nSeccomp:\t2\n"})
    checks = check_userns(m)
    assert [c.status for c in checks] == ["fail", "warn"]
    assert "max_user_namespaces=15000" in checks[0].fix and "seccomp=unconfined" in checks[1].fix


def test_missing_ranges_give_the_usermod_line_and_missing_helpers_the_package(tmp_path):
    m = fake(tmp_path, {"etc/subuid": "", "etc/subgid": ""}, uid=0)
    assert check_subids(m)[0].status == "ok"            # root maps ids itself
    m = fake(tmp_path, {"etc/subuid": "", "etc/subgid": ""}, uid=4242, progs=())
    checks = check_subids(m)
    assert {c.name for c in checks} == {"/etc/subuid", "/etc/subgid", "newuidmap", "newgidmap"}
    assert any("usermod --add-subuids" in c.fix for c in checks) and any("uidmap" in c.fix for c in checks)


def test_cgroup_v1_or_no_delegation_is_a_warning(tmp_path):
    assert check_cgroups(fake(tmp_path, {}))[0].status == "warn"
    m = fake(tmp_path, {"cg/cgroup.controllers": "memory pids\n", "proc/self/cgroup": "0::/user.slice\n"})
    (tmp_path / "cg" / "user.slice").mkdir()
    c = check_cgroups(m)[0]
    assert c.status == "ok" or "Delegate=yes" in c.fix


def test_render_shows_every_fix():
    from builder.doctor import Check
    text = render([Check(name="a", status="ok", detail="fine"),
                   Check(name="b", status="fail", detail="broken", fix="do this")])
    assert "ok    a: fine" in text and "FAIL  b: broken" in text and "fix: do this" in text


def test_this_machine_passes_and_the_worker_starts():
    checks = run_checks()
    assert not [c for c in checks if c.status == "fail"], render(checks)
    assert any(c.name == "sandbox worker" and c.status in ("ok", "warn") for c in checks)


def test_cli_doctor_prints_every_check_and_exits_0_here(pybuild):
    r = pybuild("doctor")
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode()
    for name in ("user namespaces", "libseccomp", "sandbox worker", "step limits"):
        assert name in out, out
