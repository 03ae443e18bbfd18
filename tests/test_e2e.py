"""End-to-end builds through the CLI, checked with real tools (skopeo, umoci, a real registry)."""
from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from conftest import REPO, make_context, pybuild_cmd
from imagecheck import validate_image

pytestmark = pytest.mark.integration


def example_ctx(workdir: Path) -> Path:
    dst = workdir / "example"
    shutil.copytree(REPO / "testdata" / "example", dst)
    subprocess.run(["chmod", "-R", "a+rwX", str(dst)], check=True)
    return dst


def step_states(log: str) -> dict[str, str]:
    """Plain progress → {step name: "CACHED" | "DONE" | "ERROR"} for Dockerfile steps."""
    names: dict[str, str] = {}
    states: dict[str, str] = {}
    for line in log.splitlines():
        num, _, rest = line.partition(" ")
        if rest.startswith("[") and "] " in rest and num not in names:
            names[num] = rest
        elif rest in ("CACHED",) or rest.startswith("DONE") or rest.startswith("ERROR"):
            if num in names:
                states[names[num]] = rest.split()[0].rstrip(":")
    return {n: s for n, s in states.items() if any(k in n for k in ("RUN", "COPY", "ADD", "WORKDIR"))}


def skopeo_inspect(tar: Path) -> dict:
    p = subprocess.run(["skopeo", "inspect", f"oci-archive:{tar}"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def umoci_unpack(tar: Path, dest: Path) -> Path:
    lay = dest / "layout"
    lay.mkdir(parents=True)
    with tarfile.open(tar) as tf:          # an OCI layout holds only plain files and dirs
        for m in tf.getmembers():
            target = lay / m.name.lstrip("./")
            assert ".." not in Path(m.name).parts
            if m.isdir():
                target.mkdir(parents=True, exist_ok=True)
            elif m.isfile():
                target.parent.mkdir(parents=True, exist_ok=True)
                with tf.extractfile(m) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
    idx = json.loads((lay / "index.json").read_text())
    tag = (idx["manifests"][0].get("annotations") or {}).get("org.opencontainers.image.ref.name")
    if not tag:
        idx["manifests"][0].setdefault("annotations", {})["org.opencontainers.image.ref.name"] = "t"
        (lay / "index.json").write_text(json.dumps(idx))
        tag = "t"
    bundle = dest / "bundle"
    p = subprocess.run(["umoci", "unpack", "--rootless", "--image", f"{lay}:{tag}", str(bundle)],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    return bundle / "rootfs"


def test_example_builds_to_valid_oci_tar(pybuild, workdir, base_layout, registry):
    ctx = example_ctx(workdir)
    out = workdir / "example.tar"
    r = pybuild("build", str(ctx), "--build-context", f"base=oci-layout://{base_layout}:latest",
                "-o", f"type=oci,dest={out}", "-t", "example:1", "--progress", "plain")
    assert r.returncode == 0, r.stderr
    img = validate_image(out)
    assert r.stdout.decode().strip() == img["digest"]
    cfg = img["config"]["config"]
    assert cfg["User"] == "web" and cfg["Cmd"] == ["httpd", "-f", "-p", "8080", "-h", "/var/www"]
    assert cfg["ExposedPorts"] == {"8080/tcp": {}}
    assert skopeo_inspect(out)["Architecture"] == "amd64"
    rootfs = umoci_unpack(out, workdir / "umoci")
    assert "hello from pybuild" in (rootfs / "var/www/index.html").read_text()
    assert not (rootfs / "var/www/index.html.in").exists()
    p = subprocess.run(["skopeo", "copy", "--quiet", f"oci-archive:{out}", f"docker://{registry}/e2e/example:1",
                        "--dest-tls-verify=false"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


def test_rebuild_is_cached_same_digest_and_one_change_reruns_from_there(pybuild, workdir, base_layout):
    ctx = example_ctx(workdir)
    args = ("build", str(ctx), "--build-context", f"base=oci-layout://{base_layout}:latest", "--progress", "plain")
    first = pybuild(*args)
    assert first.returncode == 0, first.stderr
    second = pybuild(*args)
    assert second.returncode == 0, second.stderr
    assert second.stdout == first.stdout, "a fully cached rebuild must give the same image digest"
    steps = step_states(second.stderr)
    assert steps and all(state == "CACHED" for state in steps.values()), second.stderr
    (ctx / "site" / "style.css").write_text("body { color: red; }\n")
    third = pybuild(*args)
    assert third.returncode == 0, third.stderr
    assert third.stdout != first.stdout
    states = step_states(third.stderr)
    ran = sorted(name for name, st in states.items() if st != "CACHED")
    # the changed file is copied by build 4/5; that COPY and what follows it rerun, nothing before
    assert any("WORKDIR /src" in n for n, st in states.items() if st == "CACHED"), states
    assert any("COPY site/" in n for n in ran) and any("RUN sed" in n for n in ran), states
    assert not any("WORKDIR" in n for n in ran), states


def test_registry_base_user_and_groups(pybuild, workdir, base_image):
    ctx = make_context(workdir / "ctx", {"Dockerfile": f"FROM {base_image}\nUSER app\nRUN id > /tmp/id.txt\n"})
    out = workdir / "o"
    r = pybuild("build", str(ctx), "-o", f"type=local,dest={out}")
    assert r.returncode == 0, r.stderr
    # BuildKit v0.25: the primary group is a supplementary group too
    assert (out / "tmp/id.txt").read_text().strip() == "uid=1000(app) gid=1000(app) groups=50(staff),1000(app)"


def test_tar_to_stdout_holds_only_the_tar(pybuild, workdir, base_image):
    ctx = make_context(workdir / "ctx", {"Dockerfile": f"FROM {base_image}\nRUN echo hi > /hi\n"})
    r = pybuild("build", str(ctx), "-o", "-", "--progress", "plain")
    assert r.returncode == 0, r.stderr
    with tarfile.open(fileobj=io.BytesIO(r.stdout)) as tf:
        names = tf.getnames()
        assert "hi" in names or "./hi" in names
        assert tf.extractfile([m for m in tf.getmembers() if m.name.lstrip("./") == "hi"][0]).read() == b"hi\n"


@pytest.mark.parametrize("compression", ["gzip", "zstd", "uncompressed"])
def test_compressions(pybuild, workdir, base_image, compression):
    ctx = make_context(workdir / "ctx", {"Dockerfile": f"FROM {base_image}\nRUN echo {compression} > /c\n"})
    out = workdir / "img.tar"
    r = pybuild("build", str(ctx), "-o", f"type=oci,dest={out},compression={compression}")
    assert r.returncode == 0, r.stderr
    img = validate_image(out)
    media = img["manifest"]["layers"][-1]["mediaType"]
    assert media.endswith({"gzip": "gzip", "zstd": "zstd", "uncompressed": "tar"}[compression])
    skopeo_inspect(out)
    if compression != "zstd":      # Debian's umoci predates zstd layers
        assert (umoci_unpack(out, workdir / "u") / "c").read_text() == compression + "\n"


def test_local_store_tag_then_from(pybuild, workdir, base_image):
    a = make_context(workdir / "a", {"Dockerfile": f"FROM {base_image}\nRUN echo stored > /stored\n"})
    r = pybuild("build", str(a), "-t", "local/stored:v1")
    assert r.returncode == 0, r.stderr
    listing = pybuild("images")
    assert "docker.io/local/stored:v1" in listing.stdout.decode()
    b = make_context(workdir / "b", {"Dockerfile": "FROM local/stored:v1\nRUN cat /stored > /again\n"})
    out = workdir / "o"
    r = pybuild("build", str(b), "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert (out / "again").read_text() == "stored\n"


def test_errors_exit_codes_and_locations(pybuild, workdir, base_image):
    ctx = make_context(workdir / "ctx", {"Dockerfile": f"FROM {base_image}\nFROBNICATE x\n"})
    r = pybuild("build", str(ctx))
    assert r.returncode == 1 and "Dockerfile:2" in r.stderr, r.stderr
    ctx2 = make_context(workdir / "ctx2", {"Dockerfile": f"FROM {base_image}\nRUN echo out && exit 3\n"})
    r = pybuild("build", str(ctx2))
    assert r.returncode == 1 and "Dockerfile:2" in r.stderr and "out" in r.stderr, r.stderr
    r = pybuild("build", str(ctx), "--output", "type=bogus,dest=x")
    assert r.returncode == 2 and "--output" in r.stderr
    ctx3 = make_context(workdir / "ctx3", {"Dockerfile": f"FROM {base_image}\nCOPY missing.txt /\n"})
    r = pybuild("build", str(ctx3))
    assert r.returncode == 1 and "Dockerfile:2" in r.stderr and "missing.txt" in r.stderr, r.stderr
    ctx4 = make_context(workdir / "ctx4", {"Dockerfile": f"FROM {base_image} AS Upper\nFROM Upper\n"})
    r = pybuild("build", str(ctx4))
    assert r.returncode == 1 and "Dockerfile:2" in r.stderr and "lowercase" in r.stderr, r.stderr
    ctx5 = make_context(workdir / "ctx5", {"Dockerfile": f"FROM {base_image.rsplit(':', 1)[0]}:no-such-tag\n"})
    r = pybuild("build", str(ctx5))
    assert r.returncode == 1 and "Dockerfile:1" in r.stderr and "no-such-tag" in r.stderr, r.stderr


@pytest.mark.parametrize("sig,user", [(signal.SIGINT, "root"), (signal.SIGTERM, "root"), (signal.SIGINT, "app")])
def test_signal_stops_running_steps_and_cleans_up(workdir, base_image, sig, user):
    ctx = make_context(workdir / "ctx", {"Dockerfile": f"FROM {base_image}\nUSER {user}\n"
                                                      "RUN echo started && sleep 1234\n"})
    root = workdir / "root"
    p = subprocess.Popen(pybuild_cmd() + ["build", str(ctx), "--progress", "plain"],
                         env={**os.environ, "PYBUILD_ROOT": str(root)}, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline:
        if subprocess.run(["pgrep", "-f", "sleep 1234"], capture_output=True).returncode == 0:
            break
        time.sleep(0.2)
    else:
        p.kill()
        pytest.fail("the RUN step never started")
    p.send_signal(sig)
    assert p.wait(timeout=30) == 130
    time.sleep(0.5)
    assert subprocess.run(["pgrep", "-f", "sleep 1234"], capture_output=True).returncode != 0
    assert list((root / "tmp").iterdir()) == []
    assert list((root / "ingest").iterdir()) == []


def test_unprivileged_user_builds_example_and_user_steps(pybuild, workdir, base_layout, unpriv_user, base_image):
    ctx = example_ctx(workdir)
    subprocess.run(["chown", "-R", unpriv_user, str(ctx)], check=True)
    out = workdir / "unpriv.tar"
    r = pybuild("build", str(ctx), "--build-context", f"base=oci-layout://{base_layout}:latest",
                "-o", f"type=oci,dest={out}", user=unpriv_user, root=workdir / "uroot")
    assert r.returncode == 0, r.stderr
    validate_image(out)
    ctx2 = make_context(workdir / "u2", {"Dockerfile": f"FROM {base_image}\nUSER app\nRUN id -u > /tmp/uid\n"},
                        owner=unpriv_user)
    o2 = workdir / "u2out"
    r = pybuild("build", str(ctx2), "-o", f"type=tar,dest={o2}", user=unpriv_user, root=workdir / "uroot")
    assert r.returncode == 0, r.stderr
    with tarfile.open(o2) as tf:
        m = [m for m in tf.getmembers() if m.name.lstrip("./") == "tmp/uid"][0]
        assert tf.extractfile(m).read() == b"1000\n" and m.uid == 1000


def test_two_builds_share_one_store_at_once(workdir, base_image):
    """Two pybuild processes on one PYBUILD_ROOT, same base and overlapping steps."""
    root = workdir / "shared-root"
    procs = []
    for i in range(2):
        ctx = make_context(workdir / f"c{i}", {"Dockerfile": f"FROM {base_image}\nRUN echo common > /c\n"
                                                            f"RUN echo {i} > /n\n"})
        procs.append(subprocess.Popen(pybuild_cmd() + ["build", str(ctx), "-o", f"type=oci,dest={workdir}/o{i}.tar"],
                                      env={**os.environ, "PYBUILD_ROOT": str(root)},
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()
    imgs = [validate_image(workdir / f"o{i}.tar") for i in range(2)]
    assert imgs[0]["digest"] != imgs[1]["digest"]
    assert list((root / "ingest").iterdir()) == []


def test_user_without_subuid_range_builds_example_and_gets_a_clear_error_for_other_users(
        pybuild, workdir, base_layout, base_image, norange_user):
    ctx = example_ctx(workdir)
    out = workdir / "norange.tar"
    r = pybuild("build", str(ctx), "--build-context", f"base=oci-layout://{base_layout}:latest",
                "-o", f"type=oci,dest={out}", user=norange_user, root=workdir / "nroot")
    assert r.returncode == 0, r.stderr
    validate_image(out)
    ctx2 = make_context(workdir / "n2", {"Dockerfile": f"FROM {base_layout and 'base'}\nUSER app\nRUN id\n"},
                        owner=norange_user)
    r = pybuild("build", str(ctx2), "--build-context", f"base=oci-layout://{base_layout}:latest",
                user=norange_user, root=workdir / "nroot")
    assert r.returncode == 1
    assert "Dockerfile:3" in r.stderr and "/etc/subuid" in r.stderr and "usermod" in r.stderr, r.stderr


def test_copy_from_the_stage_that_is_also_the_base(pybuild, workdir, base_image):
    """`FROM p` + `COPY --from=p`: the copy source is the base itself (one vertex input)."""
    ctx = make_context(workdir / "ctx", {"Dockerfile": f"FROM {base_image} AS p\nRUN echo p > /p.txt\n"
                                                      "FROM p\nCOPY --from=p /p.txt /copied.txt\n"})
    out = workdir / "o"
    r = pybuild("build", str(ctx), "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert (out / "copied.txt").read_text() == "p\n"


def test_network_host_needs_the_entitlement(pybuild, workdir, base_image):
    ctx = make_context(workdir / "ctx", {"Dockerfile": f"FROM {base_image}\nRUN --network=host true\n"})
    r = pybuild("build", str(ctx))
    assert r.returncode == 1 and "Dockerfile:2" in r.stderr and "--allow network.host" in r.stderr, r.stderr
    r = pybuild("build", str(ctx), "--allow", "network.host")
    assert r.returncode == 0, r.stderr
    r = pybuild("build", str(ctx), "--allow", "security.insecure")
    assert r.returncode == 2 and "rootless" in r.stderr


@pytest.mark.parametrize("snapshotter", ["overlay", "native"])
def test_hardlink_group_with_a_replaced_or_deleted_parent(pybuild, workdir, base_image, snapshotter):
    """A step changes one name of a hard-link group whose other name's directory was deleted or
    replaced by a symlink to a host-looking path: nothing is linked outside the rootfs."""
    host_dir = workdir / "host-target"
    host_dir.mkdir()
    ctx = make_context(workdir / "ctx", {"Dockerfile": (
        f"FROM {base_image}\n"
        "RUN mkdir /a /b /c && echo x > /a/x && ln /a/x /b/y && ln /a/x /c/z\n"
        f"RUN chmod 600 /a/x && rm -rf /b && rm -rf /c && ln -s {host_dir} /c\n")})
    out = workdir / "o"
    r = pybuild("build", str(ctx), "-o", str(out), env={"PYBUILD_SNAPSHOTTER": snapshotter})
    assert r.returncode == 0, r.stderr
    assert list(host_dir.iterdir()) == []
    assert not (out / "b").exists() and os.readlink(out / "c") == str(host_dir)
    assert oct((out / "a" / "x").stat().st_mode & 0o777) == "0o600"


def test_run_cannot_write_host_sysfs_or_cgroups(pybuild, workdir, base_image):
    ctx = make_context(workdir / "ctx", {"Dockerfile": (
        f"FROM {base_image}\n"
        "RUN for d in /sys/fs/cgroup /sys/fs/cgroup/* /sys/kernel; do "
        "mkdir $d/pybuild-probe 2>/dev/null && echo \"W $d\" && rmdir $d/pybuild-probe; done > /probe; true\n")})
    out = workdir / "o"
    r = pybuild("build", str(ctx), "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert (out / "probe").read_text() == "", (out / "probe").read_text()


def test_context_bind_mount_applies_dockerignore_and_resets_owners(pybuild, workdir, base_image):
    ctx = make_context(workdir / "ctx", {
        "Dockerfile": f"FROM {base_image}\nRUN --mount=type=bind,target=/src,rw=true "
                      "ls -A /src | sort > /seen && stat -c '%u:%g' /src/kept.txt > /owner && echo x > /src/new\n",
        ".dockerignore": "secret.txt\n", "kept.txt": "k", "secret.txt": "s"})
    os.chown(ctx / "kept.txt", 1234, 4321)
    out = workdir / "o"
    r = pybuild("build", str(ctx), "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert (out / "seen").read_text().split() == [".dockerignore", "Dockerfile", "kept.txt"]
    assert (out / "owner").read_text() == "0:0\n"
    assert not (ctx / "new").exists() and not (out / "src" / "new").exists()


def test_local_output_into_a_used_folder_replaces_what_is_there(pybuild, workdir, base_image):
    ctx = make_context(workdir / "ctx", {"Dockerfile": f"FROM {base_image}\nRUN mkdir -p /etc/x && echo new > /etc/x/f\n"})
    out = workdir / "o"
    (out / "etc" / "x").mkdir(parents=True)
    (out / "etc" / "x" / "f").write_text("old")
    (out / "stale.txt").write_text("kept")          # buildx's local exporter leaves other files
    outside = workdir / "outside"
    outside.mkdir()
    os.symlink(outside, out / "tmp")                 # replaced, never written through
    for _ in range(2):
        r = pybuild("build", str(ctx), "-o", str(out))
        assert r.returncode == 0, r.stderr
    assert (out / "etc" / "x" / "f").read_text() == "new\n"
    assert (out / "stale.txt").read_text() == "kept"
    assert (out / "tmp").is_dir() and not (out / "tmp").is_symlink() and list(outside.iterdir()) == []


def test_unreadable_context_file_is_a_clear_error(pybuild, workdir, base_image, unpriv_user):
    ctx = make_context(workdir / "ur", {"Dockerfile": f"FROM {base_image}\nCOPY secret /s\n", "secret": "x"},
                       owner=unpriv_user)
    os.chmod(ctx / "secret", 0)
    r = pybuild("build", str(ctx), user=unpriv_user, root=workdir / "uroot")
    assert r.returncode == 1 and "Dockerfile:2" in r.stderr and "permission denied" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_non_utf8_dockerfile_builds_and_the_step_gets_the_bytes(pybuild, workdir, base_image):
    ctx = make_context(workdir / "nu", {"Dockerfile": f"FROM {base_image}\n".encode()
                                        + b"LABEL x=caf\xe9\nRUN printf '\\377' > /x && echo caf\xe9 > /e\n"})
    out = workdir / "nu-out"
    r = pybuild("build", str(ctx), "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert (out / "x").read_bytes() == b"\xff" and (out / "e").read_bytes() == b"caf\xe9\n"


def test_proxy_build_args_reach_run_but_not_the_cache_key(pybuild, workdir, base_image):
    ctx = make_context(workdir / "px", {"Dockerfile": f"FROM {base_image}\nRUN echo \"$HTTP_PROXY\" > /p\n"})
    out1, out2 = workdir / "px1", workdir / "px2"
    r = pybuild("build", str(ctx), "--build-arg", "HTTP_PROXY=http://p1:3128", "-o", str(out1), "--progress", "plain")
    assert r.returncode == 0, r.stderr
    assert (out1 / "p").read_text() == "http://p1:3128\n"
    r = pybuild("build", str(ctx), "--build-arg", "HTTP_PROXY=http://p2:3128", "-o", str(out2), "--progress", "plain")
    assert r.returncode == 0, r.stderr
    assert "CACHED" in r.stderr and (out2 / "p").read_text() == "http://p1:3128\n", "another proxy is a cache hit"
