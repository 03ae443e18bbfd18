#!/usr/bin/env python3
"""Make a small busybox base image as an OCI image layout directory, offline and deterministic.

    python3 testdata/make-base.py DIR [--tag latest] [--busybox /bin/busybox]

The image: /bin/busybox plus a symlink per applet, /etc/passwd (root, app 1000, nobody),
/etc/group, /tmp 1777, /root 0700, /home/app; Env PATH, Cmd ["sh"]. Every file belongs to root,
so a user without an /etc/subuid range can build on it too. Hand it to a
build with `--build-context base=oci-layout://DIR:latest` and `FROM base`. Standard library only.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile

EPOCH = 946684800
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PASSWD = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
GROUP = "root:x:0:\nstaff:x:50:app\napp:x:1000:\nnogroup:x:65534:\n"


def _ti(name: str, typ: bytes, mode: int, uid: int = 0, gid: int = 0, size: int = 0, link: str = "") -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode, ti.uid, ti.gid, ti.size, ti.linkname, ti.mtime = typ, mode, uid, gid, size, link, EPOCH
    return ti


def layer_tar(busybox: str) -> bytes:
    applets = subprocess.run([busybox, "--list-full"], check=True, capture_output=True, text=True).stdout.split()
    entries: dict[str, tuple[tarfile.TarInfo, bytes | None]] = {}
    for d, mode, owner in (("bin", 0o755, 0), ("sbin", 0o755, 0), ("usr", 0o755, 0), ("usr/bin", 0o755, 0),
                           ("usr/sbin", 0o755, 0), ("etc", 0o755, 0), ("tmp", 0o1777, 0), ("root", 0o700, 0),
                           ("home", 0o755, 0), ("home/app", 0o755, 0), ("var", 0o755, 0)):
        entries[d] = (_ti(d, tarfile.DIRTYPE, mode, owner, owner), None)
    data = open(busybox, "rb").read()
    entries["bin/busybox"] = (_ti("bin/busybox", tarfile.REGTYPE, 0o755, size=len(data)), data)
    for a in applets:
        if a in ("bin/busybox", "linuxrc") or a.count("/") > 2:
            continue
        entries.setdefault(a, (_ti(a, tarfile.SYMTYPE, 0o777, link="/bin/busybox"), None))
    for name, text in (("etc/passwd", PASSWD), ("etc/group", GROUP)):
        b = text.encode()
        entries[name] = (_ti(name, tarfile.REGTYPE, 0o644, size=len(b)), b)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name in sorted(entries):
            ti, payload = entries[name]
            tf.addfile(ti, io.BytesIO(payload) if payload is not None else None)
    return buf.getvalue()


def write_blob(out: str, data: bytes) -> tuple[str, int]:
    h = hashlib.sha256(data).hexdigest()
    with open(os.path.join(out, "blobs", "sha256", h), "wb") as f:
        f.write(data)
    return "sha256:" + h, len(data)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir")
    ap.add_argument("--tag", default="latest")
    ap.add_argument("--busybox", default=shutil.which("busybox") or "/bin/busybox")
    a = ap.parse_args()
    os.makedirs(os.path.join(a.dir, "blobs", "sha256"), exist_ok=True)
    tar = layer_tar(a.busybox)
    gz = gzip.compress(tar, mtime=0)
    ldig, lsize = write_blob(a.dir, gz)
    config = {"architecture": "amd64", "os": "linux", "created": "2000-01-01T00:00:00Z",
              "config": {"Env": [f"PATH={PATH}"], "Cmd": ["sh"]},
              "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(tar).hexdigest()]},
              "history": [{"created": "2000-01-01T00:00:00Z", "created_by": "testdata/make-base.py"}]}
    cdig, csize = write_blob(a.dir, json.dumps(config, sort_keys=True, separators=(",", ":")).encode())
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cdig, "size": csize},
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": ldig, "size": lsize}]}
    mdig, msize = write_blob(a.dir, json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode())
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": mdig, "size": msize,
                            "annotations": {"org.opencontainers.image.ref.name": a.tag}}]}
    with open(os.path.join(a.dir, "oci-layout"), "w") as f:
        f.write('{"imageLayoutVersion":"1.0.0"}')
    with open(os.path.join(a.dir, "index.json"), "w") as f:
        json.dump(index, f)
    print(mdig)


if __name__ == "__main__":
    main()
