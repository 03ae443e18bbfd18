#!/usr/bin/env python3
"""Make a Debian bookworm base image (debootstrap --variant=minbase) as an OCI image layout.

    python3 testdata/make-debian-base.py [DIR] [--tag latest] [--mirror URL] [--cache /var/tmp]

Runs as root (debootstrap needs it). The root filesystem comes from the machine's own Debian
mirror (the first `URIs:` of /etc/apt/sources.list.d/debian.sources, else the first `deb` line of
/etc/apt/sources.list; `--mirror` overrides) and becomes an OCI image layout with one gzip layer:
a tar of the whole root, entries sorted by name, numeric owners, every mtime set to 2000-01-01,
no atime/ctime, gzip without a name or time, so the same root gives the same digests. /dev, /proc
and /sys are left empty (a RUN step gets its own), downloaded .debs and apt lists are dropped.

The layout is cached in `CACHE/pybuild-debian-base-KEY/layout`, KEY a hash of this script's
content and the mirror, so a machine pays for debootstrap once; concurrent callers wait on a lock
and a half-made cache is never used. With DIR the layout is also copied there. The layout's path
is printed on stdout. Exits 1 with a message naming the cause when debootstrap is missing or the
mirror cannot be reached. Standard library only (plus debootstrap, GNU tar, gzip).
"""
from __future__ import annotations

import argparse
import fcntl
import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

SUITE = "bookworm"
EPOCH = 946684800
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
EMPTIED = ("dev", "proc", "sys", "run", "tmp", "var/cache/apt/archives", "var/lib/apt/lists")


class Failure(Exception):
    """What went wrong, for the one-line message on stderr."""


def machine_mirror() -> str:
    """The machine's own Debian mirror, from its apt sources."""
    try:
        with open("/etc/apt/sources.list.d/debian.sources") as f:
            for line in f:
                m = re.match(r"URIs:\s*(\S+)", line)
                if m:
                    return m.group(1)
    except FileNotFoundError:
        pass
    try:
        with open("/etc/apt/sources.list") as f:
            for line in f:
                m = re.match(r"deb\s+(?:\[[^]]*\]\s+)?(\S+)", line)
                if m:
                    return m.group(1)
    except FileNotFoundError:
        pass
    raise Failure("no Debian mirror in /etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list; "
                  "give one with --mirror URL")


def debootstrap(root: str, mirror: str) -> None:
    """debootstrap --variant=minbase SUITE into `root`; /proc etc. it mounts are unmounted after."""
    exe = shutil.which("debootstrap") or next((p for p in ("/usr/sbin/debootstrap", "/sbin/debootstrap")
                                               if os.path.exists(p)), None)
    if exe is None:
        raise Failure("debootstrap is not installed (apt-get install debootstrap; .ci/run installs it)")
    if os.geteuid() != 0:
        raise Failure("debootstrap needs root (run this script as root)")
    p = subprocess.run([exe, "--variant=minbase", SUITE, root, mirror], capture_output=True, text=True)
    subprocess.run(["sh", "-c", f"grep -o ' {re.escape(root)}/[^ ]*' /proc/mounts | sort -r | "
                    "xargs -r -n1 umount -l"], capture_output=True)
    if p.returncode != 0:
        tail = "\n".join((p.stdout + p.stderr).strip().splitlines()[-8:])
        raise Failure(f"debootstrap --variant=minbase {SUITE} from {mirror} failed (exit {p.returncode}); "
                      f"is the mirror reachable? Last lines:\n{tail}")


def layer_tar(root: str, dest: str) -> None:
    """A deterministic tar of `root` at `dest` (see the module docstring)."""
    for rel in EMPTIED:
        d = os.path.join(root, rel)
        if os.path.isdir(d) and not os.path.islink(d):
            for name in os.listdir(d):
                p = os.path.join(d, name)
                if os.path.isdir(p) and not os.path.islink(p):
                    shutil.rmtree(p)
                else:
                    os.unlink(p)
    os.makedirs(os.path.join(root, "var/cache/apt/archives/partial"), exist_ok=True)
    os.makedirs(os.path.join(root, "var/lib/apt/lists/partial"), exist_ok=True)
    os.chmod(os.path.join(root, "tmp"), 0o1777)
    subprocess.run(["tar", "--sort=name", f"--mtime=@{EPOCH}", "--numeric-owner", "--format=pax",
                    "--pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime",
                    "-C", root, "-cf", dest, "."], check=True)


def write_blob(out: str, data: bytes) -> tuple[str, int]:
    h = hashlib.sha256(data).hexdigest()
    with open(os.path.join(out, "blobs", "sha256", h), "wb") as f:
        f.write(data)
    return "sha256:" + h, len(data)


def file_blob(out: str, path: str) -> tuple[str, int]:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    os.rename(path, os.path.join(out, "blobs", "sha256", h.hexdigest()))
    return "sha256:" + h.hexdigest(), os.path.getsize(os.path.join(out, "blobs", "sha256", h.hexdigest()))


def write_layout(out: str, tar_path: str, tag: str) -> None:
    """An OCI image layout at `out` with the tar at `tar_path` as its one gzip layer."""
    os.makedirs(os.path.join(out, "blobs", "sha256"))
    diff = hashlib.sha256()
    gz_path = tar_path + ".gz"
    with open(tar_path, "rb") as src, open(gz_path, "wb") as raw, \
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as gz:
        for chunk in iter(lambda: src.read(1 << 20), b""):
            diff.update(chunk)
            gz.write(chunk)
    os.unlink(tar_path)
    ldig, lsize = file_blob(out, gz_path)
    arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True).stdout.strip()
    config = {"architecture": arch or "amd64", "os": "linux", "created": "2000-01-01T00:00:00Z",
              "config": {"Env": [f"PATH={PATH}"], "Cmd": ["bash"]},
              "rootfs": {"type": "layers", "diff_ids": ["sha256:" + diff.hexdigest()]},
              "history": [{"created": "2000-01-01T00:00:00Z",
                           "created_by": f"testdata/make-debian-base.py: debootstrap --variant=minbase {SUITE}"}]}
    cdig, csize = write_blob(out, json.dumps(config, sort_keys=True, separators=(",", ":")).encode())
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cdig, "size": csize},
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": ldig, "size": lsize}]}
    mdig, msize = write_blob(out, json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode())
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": mdig, "size": msize,
                            "annotations": {"org.opencontainers.image.ref.name": tag}}]}
    with open(os.path.join(out, "oci-layout"), "w") as f:
        f.write('{"imageLayoutVersion":"1.0.0"}')
    with open(os.path.join(out, "index.json"), "w") as f:
        json.dump(index, f)


def cached_layout(cache: str, mirror: str, tag: str) -> str:
    """The cached layout's path, made first when missing (under an exclusive lock)."""
    with open(os.path.abspath(__file__), "rb") as f:
        key = hashlib.sha256(f.read() + b"\0" + mirror.encode() + b"\0" + tag.encode()).hexdigest()[:16]
    top = os.path.join(cache, f"pybuild-debian-base-{key}")
    layout = os.path.join(top, "layout")
    if os.path.isfile(os.path.join(layout, "index.json")):       # made (renamed in whole) before
        return layout
    os.makedirs(top, mode=0o755, exist_ok=True)
    with open(os.path.join(top, "lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.isfile(os.path.join(layout, "index.json")):
            return layout
        work = tempfile.mkdtemp(prefix="work-", dir=top)
        try:
            root = os.path.join(work, "rootfs")
            debootstrap(root, mirror)
            layer_tar(root, os.path.join(work, "layer.tar"))
            shutil.rmtree(root)
            write_layout(os.path.join(work, "layout"), os.path.join(work, "layer.tar"), tag)
            subprocess.run(["chmod", "-R", "a+rX,go-w", os.path.join(work, "layout")], check=True)
            os.rename(os.path.join(work, "layout"), layout)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return layout


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir", nargs="?", help="also copy the layout here")
    ap.add_argument("--tag", default="latest")
    ap.add_argument("--mirror", help="Debian mirror (default: the machine's own apt source)")
    ap.add_argument("--cache", default="/var/tmp", help="where the cached layout lives")
    a = ap.parse_args()
    try:
        layout = cached_layout(a.cache, a.mirror or machine_mirror(), a.tag)
    except Failure as e:
        print(f"make-debian-base.py: {e}", file=sys.stderr)
        return 1
    if a.dir:
        shutil.copytree(layout, a.dir, dirs_exist_ok=True)
        layout = a.dir
    print(layout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
