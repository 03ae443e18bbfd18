"""The rootless sandbox with real namespaces: as root (both snapshotters) and as unprivileged
users with and without a subordinate id range (runuser)."""
from __future__ import annotations

import io
import json
import os
import pwd
import shutil
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from builder.errors import BuildCancelled, ExecError, SandboxError  # noqa: E402
from builder.image.view import ChainSource, HostDir, LayerRef  # noqa: E402
from builder.layer.diff import tree_changes  # noqa: E402
from builder.layer.tar import write_layer  # noqa: E402
from builder.image.oci import Descriptor, MediaType  # noqa: E402
from builder.solve.ops import Copy, ExecOp, FileOp, Mkfile, Mount  # noqa: E402
from builder.sandbox.client import SandboxOptions, Worker  # noqa: E402
from builder.store.content import ContentStore  # noqa: E402

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (creates mounts/users)")
BUSYBOX = next((p for p in ("/usr/bin/busybox", "/bin/busybox") if os.path.exists(p)), None)
APPLETS = ("sh", "id", "ls", "cat", "echo", "rm", "ps", "ip", "touch", "mkdir", "true", "sleep", "stat")

pytestmark = [pytest.mark.skipif(BUSYBOX is None, reason="busybox-static not installed")]


# ---------------------------------------------------------------------- helpers (also used by the runuser script)

def make_base(store: ContentStore, tmp: Path, *, app_owner: int = 1000) -> LayerRef:
    """A busybox root filesystem without /proc, /dev, /sys, /run or /etc/hosts (so every mount
    point is a stub that must not leak into layers)."""
    root, empty = tmp / "base", tmp / "base-empty"
    empty.mkdir()
    for d in ("bin", "etc", "tmp", "home/app"):
        (root / d).mkdir(parents=True)
    os.chmod(root / "tmp", 0o1777)
    shutil.copy(BUSYBOX, root / "bin/busybox")
    for n in APPLETS:
        os.symlink("busybox", root / "bin" / n)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n")
    (root / "etc/group").write_text("root:x:0:\nstaff:x:50:app\napp:x:1000:\n")
    (root / "etc/motd").write_text("hello\n")
    for p in [root, *root.rglob("*")]:
        os.lchown(p, 0, 0)
    os.chown(root / "home/app", app_owner, app_owner)
    with store.writer() as w:
        st = write_layer(root, tree_changes(empty, root), w, compression="gzip")
        d, size = w.commit()
    return LayerRef(descriptor=Descriptor(media_type=MediaType.oci_layer("gzip"), digest=d, size=size),
                    diff_id=st.diff_id)


def entries(store: ContentStore, ref: LayerRef) -> dict[str, tuple]:
    """name → (type, mode, uid, gid, content) of a layer blob."""
    out = {}
    with store.open(ref.descriptor.digest) as f, tarfile.open(fileobj=f, mode="r|*") as tf:
        for m in tf:
            data = tf.extractfile(m).read() if m.isfile() else None
            out[m.name] = (m.type, m.mode, m.uid, m.gid, data)
    return out


def sh(script: str, **kw) -> ExecOp:
    return ExecOp(args=("/bin/sh", "-c", script), env=kw.pop("env", ()), **kw)


# ---------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def env(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("needs root")
    tmp = tmp_path_factory.mktemp("sandbox")
    store = ContentStore(tmp / "store")
    return tmp, store, (make_base(store, tmp),)


@pytest.fixture(scope="module", params=["overlay", "native"])
def worker(request, env):
    tmp, store, _ = env
    with Worker(store, SandboxOptions(root=tmp / f"root-{request.param}", snapshotter=request.param)) as w:
        assert w.snapshotter_name == request.param
        yield w


def run(worker, base, op, **kw):
    out: list[bytes] = []
    ref = worker.run_exec(base=base, op=op, mount_sources=kw.pop("mount_sources", {}),
                          secrets=kw.pop("secrets", {}), output=out.append)
    return ref, b"".join(out).decode()


# ---------------------------------------------------------------------- as root

@ROOT_ONLY
def test_run_writes_file_and_whiteout(worker, env):
    _, store, base = env
    ref, out = run(worker, base, sh("echo hi > /tmp/x; rm /etc/motd; echo done"))
    assert out == "done\n"
    e = entries(store, ref)
    assert e["tmp/x"][4] == b"hi\n"
    assert "etc/.wh.motd" in e
    # mount point stubs (/proc, /dev, /sys, /etc/hosts, /etc/resolv.conf) never reach the layer
    assert not {"proc", "dev", "sys", "etc/hosts", "etc/resolv.conf"} & set(e)
    assert ref.descriptor.media_type == MediaType.oci_layer("gzip")
    assert store.has(ref.descriptor.digest)


@ROOT_ONLY
def test_noop_run_gives_no_layer_and_chains(worker, env):
    _, store, base = env
    assert run(worker, base, sh("true"))[0] is None
    ref, _ = run(worker, base, sh("echo 1 > /one"))
    ref2, out = run(worker, base + (ref,), sh("cat /one; echo 2 > /two"))
    assert out == "1\n" and set(entries(store, ref2)) == {"two"}


@ROOT_ONLY
def test_users_and_groups(worker, env):
    _, _, base = env
    assert run(worker, base, sh("id", user="app"))[1] == "uid=1000(app) gid=1000(app) groups=50(staff),1000(app)\n"
    assert run(worker, base, sh("id", user="1000:50"))[1] == "uid=1000(app) gid=50(staff) groups=50(staff)\n"
    assert run(worker, base, sh("id", user="1000"))[1] == "uid=1000(app) gid=1000(app) groups=50(staff),1000(app)\n"
    assert run(worker, base, sh("id"))[1] == "uid=0(root) gid=0(root) groups=0(root)\n"
    with pytest.raises(SandboxError, match="nosuchuser"):
        run(worker, base, sh("id", user="nosuchuser"))


@ROOT_ONLY
def test_pid_namespace_env_cwd_hostname(worker, env):
    _, store, base = env
    ref, out = run(worker, base, sh("ps -o pid | tail -n +2 | wc -l; pwd; echo $PATH; echo $FOO; cat /proc/sys/kernel/hostname",
                                    env=("FOO=bar",), cwd="/work/dir"))
    nproc, cwd, path, foo, host = out.split("\n")[:5]
    assert int(nproc) <= 5          # init, sh, ps, tail, wc: nothing from the host
    assert cwd == "/work/dir" and foo == "bar" and host == "buildkitsandbox"
    assert path.startswith("/usr/local/sbin")
    assert {"work", "work/dir"} <= set(entries(store, ref))


@ROOT_ONLY
def test_network_none_has_only_lo(worker, env):
    _, _, base = env
    _, out = run(worker, base, sh("tail -n +3 /proc/net/dev | cut -d: -f1; ip link show lo", network="none"))
    lines = out.split("\n")
    assert lines[0].strip() == "lo" and "UP" in out and ":" in lines[1]
    _, host = run(worker, base, sh("tail -n +3 /proc/net/dev | wc -l"))
    assert int(host) >= 1


@ROOT_ONLY
def test_secret_mount(worker, env):
    _, store, base = env
    m = Mount(type="secret", target="", secret_id="tok")
    ref, out = run(worker, base, sh("cat /run/secrets/tok; stat -c '%a %u' /run/secrets/tok; echo x > /f; echo $TOK",
                                    mounts=(m, Mount(type="secret", target="", secret_id="tok", env="TOK"))),
                   secrets={"tok": b"s3cret"})
    assert out == "s3cret400 0\ns3cret\n"
    assert set(entries(store, ref)) == {"f"}        # no /run, /run/secrets or the secret itself
    m2 = Mount(type="secret", target="/etc/tok", secret_id="tok", mode=0o440, uid=1000)
    assert run(worker, base, sh("stat -c '%a %u' /etc/tok", mounts=(m2,)), secrets={"tok": b"x"})[1] == "440 1000\n"
    with pytest.raises(SandboxError, match="tok"):
        run(worker, base, sh("true", mounts=(Mount(type="secret", target="", secret_id="tok", required=True),)))
    assert run(worker, base, sh("ls /run 2>&1 || echo none", mounts=(Mount(type="secret", target="", secret_id="tok"),)))[1] \
        .endswith("none\n")


@ROOT_ONLY
def test_secret_dir_existing_before_is_kept(worker, env):
    _, store, base = env
    ref, _ = run(worker, base, sh("mkdir -p /run/secrets"))
    ref2, out = run(worker, base + (ref,), sh("cat /run/secrets/tok; touch /g", mounts=(Mount(type="secret", target="", secret_id="tok"),)),
                    secrets={"tok": b"v"})
    assert out == "v" and set(entries(store, ref2)) == {"g"}


@ROOT_ONLY
def test_cache_mount_persists_and_tmpfs(worker, env):
    _, store, base = env
    cache = Mount(type="cache", target="/var/cache/x", cache_id="c1", sharing="locked", readonly=False)
    ref, _ = run(worker, base, sh("echo 1 >> /var/cache/x/n; echo y > /y", mounts=(cache,)))
    ref2, out = run(worker, base, sh("echo 2 >> /var/cache/x/n; cat /var/cache/x/n; stat -c %u /var/cache/x", mounts=(cache,)))
    assert out == "1\n2\n0\n" and ref2 is None and set(entries(store, ref)) == {"y"}
    owned = Mount(type="cache", target="/c", cache_id="c2", uid=1000, gid=1000, readonly=False)
    assert run(worker, base, sh("touch /c/f && stat -c %u /c", user="app", mounts=(owned,)))[1] == "1000\n"
    tmpfs = Mount(type="tmpfs", target="/tmp/t")
    assert run(worker, base, sh("echo z > /tmp/t/z; cat /tmp/t/z", mounts=(tmpfs,)))[0] is None


@ROOT_ONLY
def test_bind_mounts_from_host_and_chain(worker, env, tmp_path):
    _, store, base = env
    (tmp_path / "ctx").mkdir()
    (tmp_path / "ctx" / "a.txt").write_text("from host\n")
    layer, _ = run(worker, base, sh("mkdir /data; echo from chain > /data/b.txt"))
    mounts = (Mount(type="bind", target="/h", input=1),
              Mount(type="bind", target="/c", source="data", input=2),
              Mount(type="bind", target="/rw", input=1, readonly=False))
    ref, out = run(worker, base, sh("cat /h/a.txt /c/b.txt; echo w > /rw/new; cat /rw/new; touch /h/x 2>/dev/null || echo ro",
                                    mounts=mounts),
                   mount_sources={1: HostDir(path=tmp_path / "ctx"), 2: ChainSource(chain=base + (layer,))})
    assert out == "from host\nfrom chain\nw\nro\n"
    assert ref is None and not (tmp_path / "ctx" / "new").exists()


@ROOT_ONLY
def test_exit_code_gives_exec_error(worker, env):
    _, _, base = env
    with pytest.raises(ExecError) as ei:
        run(worker, base, sh("for i in $(seq 1 30); do echo line$i; done; exit 3"))
    assert ei.value.exit_code == 3
    tail = ei.value.output_tail.splitlines()
    assert len(tail) == 20 and tail[-1] == "line30"
    with pytest.raises(ExecError) as ei:
        run(worker, base, ExecOp(args=("/nonexistent",), env=()))
    assert ei.value.exit_code == 127


@ROOT_ONLY
def test_file_op(worker, env, tmp_path):
    _, store, base = env
    (tmp_path / "ctx").mkdir()
    (tmp_path / "ctx" / "hello.txt").write_text("hello\n")
    layer, _ = run(worker, base, sh("echo c > /c.txt"))
    op = FileOp(actions=(Copy(src=1, src_paths=("hello.txt",), dest="/app/"),
                         Copy(src=2, src_paths=("c.txt",), dest="/app/c.txt"),
                         Mkfile(path="/app/m", data=b"m", mode=0o600)))
    ref = worker.run_file(base=base, op=op, sources={1: HostDir(path=tmp_path / "ctx"),
                                                      2: ChainSource(chain=base + (layer,))})
    e = entries(store, ref)
    assert e["app/hello.txt"][4] == b"hello\n" and e["app/c.txt"][4] == b"c\n"
    assert e["app/m"][1] == 0o600 and e["app/hello.txt"][2:4] == (0, 0)
    _, out = run(worker, base + (ref,), sh("cat /app/hello.txt /app/m"))
    assert out == "hello\nm"


@ROOT_ONLY
def test_export_rootfs(worker, env, tmp_path):
    _, _, base = env
    ref, _ = run(worker, base, sh("echo e > /e; rm /etc/motd; chown 1000 /e"))
    worker.export_rootfs(chain=base + (ref,), dest_dir=tmp_path / "out")
    assert (tmp_path / "out/e").read_text() == "e\n" and not (tmp_path / "out/etc/motd").exists()
    assert (tmp_path / "out/e").stat().st_uid == 0    # files belong to the invoking user
    buf = io.BytesIO()
    worker.export_rootfs(chain=base + (ref,), dest_tar=buf)
    buf2 = io.BytesIO()
    worker.export_rootfs(chain=base + (ref,), dest_tar=buf2)
    assert buf.getvalue() == buf2.getvalue()
    with tarfile.open(fileobj=io.BytesIO(buf.getvalue())) as tf:
        names = tf.getnames()
        assert tf.getmember("e").uid == 1000 and "etc/motd" not in names and "bin/busybox" in names


@ROOT_ONLY
def test_cancel_kills_running_step(env):
    tmp, store, base = env
    with Worker(store, SandboxOptions(root=tmp / "root-cancel")) as w:
        errs: list[BaseException] = []

        def go() -> None:
            try:
                run(w, base, sh("sleep 30 & sleep 30"))
            except BaseException as e:  # noqa: BLE001
                errs.append(e)
        t = threading.Thread(target=go)
        t0 = time.monotonic()
        t.start()
        time.sleep(0.5)
        w.cancel()
        t.join(10)
        assert not t.is_alive() and time.monotonic() - t0 < 5
        assert isinstance(errs[0], BuildCancelled)
        with pytest.raises(BuildCancelled):
            run(w, base, sh("true"))


@ROOT_ONLY
def test_close_stops_running_steps_and_cleans_up(env):
    tmp, store, base = env
    w = Worker(store, SandboxOptions(root=tmp / "root-close")).__enter__()
    errs: list[BaseException] = []

    def go() -> None:
        try:
            run(w, base, sh("echo started; sleep 30"))
        except BaseException as e:  # noqa: BLE001
            errs.append(e)
    t = threading.Thread(target=go)
    t.start()
    time.sleep(0.5)
    t0 = time.monotonic()
    w.close()
    t.join(10)
    assert time.monotonic() - t0 < 5 and isinstance(errs[0], BuildCancelled)
    assert list((tmp / "root-close" / "w").iterdir()) == []                     # worker temp dir removed
    assert not [p for p in (tmp / "root-close" / "so").iterdir() if p.name.startswith(".t")]
    with pytest.raises(SandboxError):
        run(w, base, sh("true"))


@ROOT_ONLY
def test_concurrent_steps_and_overhead(worker, env):
    _, store, base = env
    results: dict[int, LayerRef | None] = {}

    def go(i: int) -> None:
        results[i] = run(worker, base, sh(f"sleep 0.2; echo {i} > /f{i}"))[0]
    ts = [threading.Thread(target=go, args=(i,)) for i in range(4)]
    t0 = time.monotonic()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert time.monotonic() - t0 < 0.2 * 4
    for i in range(4):
        assert set(entries(store, results[i])) == {f"f{i}"}
    n, t0 = 10, time.monotonic()
    for _ in range(n):
        run(worker, base, ExecOp(args=("/bin/true",), env=()))
    print(f"\n[{worker.snapshotter_name}] trivial RUN: {(time.monotonic() - t0) / n * 1000:.1f} ms per step")


@ROOT_ONLY
def test_hardlink_group_changed_through_one_name(worker, env):
    """As BuildKit: chmod of one name of a lower hard-link group puts the whole group in the layer."""
    _, store, base = env
    l1, _ = run(worker, base, sh("echo shared > /h1 && ln /h1 /h2 && mkdir /links && ln /h1 /links/h3"))
    l2, _ = run(worker, base + (l1,), sh("chmod 600 /h2"))
    e = entries(store, l2)
    assert {k for k in e if k.startswith(("h", "links/"))} == {"h1", "h2", "links/h3"}
    assert sorted(v[0] for k, v in e.items() if k in ("h1", "h2", "links/h3")) == [tarfile.REGTYPE, tarfile.LNKTYPE,
                                                                                   tarfile.LNKTYPE]
    assert all(e[k][1] == 0o600 for k in ("h1", "h2", "links/h3"))


@ROOT_ONLY
def test_deep_chain_runs(worker, env):
    """More layers than overlay can stack in one mount option page: the chain gets flattened."""
    _, store, base = env
    chain = base
    for i in range(38):
        ref, _ = run(worker, chain, ExecOp(args=("/bin/touch", f"/f{i}"), env=()))
        chain += (ref,)
    ref, out = run(worker, chain, sh("ls / | grep -c '^f'; rm /f0"))
    assert out == "38\n" and set(entries(store, ref)) == {".wh.f0"}


@ROOT_ONLY
def test_snapshotters_give_same_layer_contents(env):
    tmp, store, base = env
    script = sh("mkdir -p /a/b; echo 1 > /a/b/f; ln /a/b/f /a/h; ln -s b/f /a/l; chmod 4755 /a/b/f; "
                "rm /etc/motd; rm -r /home; chown 1000:50 /a/b")
    got = {}
    for kind in ("overlay", "native"):
        with Worker(store, SandboxOptions(root=tmp / f"cmp-{kind}", snapshotter=kind)) as w:
            ref, _ = run(w, base, script)
            got[kind] = entries(store, ref)
    assert got["overlay"] == got["native"]
    assert {"a/h", "a/l", "etc/.wh.motd", ".wh.home"} <= set(got["native"])


# ---------------------------------------------------------------------- as an unprivileged user

UNPRIV_SCRIPT = textwrap.dedent('''
    import json, sys
    from pathlib import Path
    import tarfile
    sys.path.insert(0, {repo!r})
    from builder.errors import IdMappingError
    from builder.image.view import LayerRef
    from builder.image.digest import Digest
    from builder.image.oci import Descriptor
    from builder.sandbox.client import Worker, SandboxOptions
    from builder.store.content import ContentStore
    from builder.solve.ops import Chown, ExecOp, FileOp, Mkfile

    def sh(script, **kw):
        return ExecOp(args=("/bin/sh", "-c", script), env=(), **kw)

    def run(w, base, op):
        out = []
        ref = w.run_exec(base=base, op=op, mount_sources={{}}, secrets={{}}, output=out.append)
        return ref, b"".join(out).decode()

    def entries(store, ref):
        with store.open(ref.descriptor.digest) as f, tarfile.open(fileobj=f, mode="r|*") as tf:
            return [m.name for m in tf]

    tmp = Path({tmp!r})
    store = ContentStore(tmp / "store")
    b = json.loads((tmp / "base.json").read_text())
    base = (LayerRef(descriptor=Descriptor(media_type=b["mt"], digest=Digest.parse(b["digest"]), size=b["size"]),
                     diff_id=Digest.parse(b["diff_id"])),)
    res = {{}}
    with Worker(store, SandboxOptions(root=tmp / "root", compression="uncompressed")) as w:
        res["snapshotter"] = w.snapshotter_name
        ref, res["id_root"] = run(w, base, sh("id; echo hi > /tmp/x; rm /etc/motd"))
        res["entries"] = sorted(entries(store, ref))
        try:
            res["id_app"] = run(w, base, sh("id", user="app"))[1]
        except IdMappingError as e:
            res["id_app_error"] = str(e)
        chown = FileOp(actions=(Mkfile(path="/owned", data=b"x", chown=Chown(user="1000", group="1000")),))
        try:
            res["file_chown"] = entries(store, w.run_file(base=base, op=chown, sources={{}}))
        except IdMappingError as e:
            res["file_chown_error"] = str(e)
        w.export_rootfs(chain=base + (ref,), dest_dir=tmp / "out")
    print(json.dumps(res))
''')


def _unpriv_python(user: str) -> str:
    """The venv interpreter if the user may run it, else the system python3."""
    for exe in (sys.executable, "/usr/bin/python3"):
        if subprocess.run(["runuser", "-u", user, "--", exe, "-c", "pass"], capture_output=True).returncode == 0:
            return exe
    pytest.skip("no Python interpreter the test user can run")


@pytest.fixture(params=["with-subuid", "without-subuid"])
def unpriv(request):
    if os.geteuid() != 0:
        pytest.skip("needs root to create the unprivileged test user")
    name = f"pbsbx{os.getpid() % 10000}{'r' if request.param == 'with-subuid' else 'n'}"
    subprocess.run(["useradd", "-M", "-K", "SUB_UID_COUNT=0", "-K", "SUB_GID_COUNT=0", name], check=True)
    saved = {f: Path(f).read_text() if Path(f).exists() else "" for f in ("/etc/subuid", "/etc/subgid")}
    if request.param == "with-subuid":
        for f in saved:
            Path(f).write_text(saved[f] + f"{name}:300000:65536\n")
    tmp = Path(tempfile.mkdtemp(prefix="pybuild-sbx-", dir="/tmp"))
    try:
        yield name, tmp, request.param == "with-subuid"
    finally:
        for f, text in saved.items():
            Path(f).write_text(text)
        subprocess.run(["userdel", name], check=False)
        subprocess.run(["rm", "-rf", str(tmp)], check=False)


def test_unprivileged_user(unpriv):
    name, tmp, ranged = unpriv
    pw = pwd.getpwnam(name)
    store = ContentStore(tmp / "store")
    ref = make_base(store, tmp, app_owner=1000 if ranged else 0)
    (tmp / "base.json").write_text(json.dumps({"mt": ref.descriptor.media_type, "digest": str(ref.descriptor.digest),
                                               "size": ref.descriptor.size, "diff_id": str(ref.diff_id)}))
    shutil.rmtree(tmp / "base")
    subprocess.run(["chown", "-R", f"{pw.pw_uid}:{pw.pw_gid}", str(tmp)], check=True)
    os.chmod(tmp, 0o755)
    (tmp / "script.py").write_text(UNPRIV_SCRIPT.format(repo=str(REPO), tmp=str(tmp)))
    p = subprocess.run(["runuser", "-u", name, "--", _unpriv_python(name), str(tmp / "script.py")],
                       capture_output=True, text=True, cwd="/tmp", timeout=60)
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout.strip().splitlines()[-1])
    # without a range setgroups(2) is denied: the user's own group (mapped to 0) stays
    assert res["id_root"] in ("uid=0(root) gid=0(root)\n", "uid=0(root) gid=0(root) groups=0(root)\n")
    assert res["entries"] == ["etc", "etc/.wh.motd", "tmp", "tmp/x"]
    assert (tmp / "out/tmp/x").stat().st_uid == pw.pw_uid      # exported files belong to the user
    if ranged:
        assert res["id_app"] == "uid=1000(app) gid=1000(app) groups=50(staff),1000(app)\n"
        assert res["file_chown"] == ["owned"]
    else:
        assert "usermod --add-subuids 100000-165535 --add-subgids 100000-165535" in res["id_app_error"]
        assert "subuid" in res["file_chown_error"]
