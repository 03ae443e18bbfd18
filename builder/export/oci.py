"""The OCI image-layout tar output (`-o type=oci,dest=FILE|-`): oci-layout, index.json and every
blob once, sorted; each blob verified as it leaves the store."""
from __future__ import annotations

import io
import tarfile
from dataclasses import replace
from pathlib import Path
from typing import BinaryIO, Iterable

from builder.export.assemble import BuiltImage
from builder.image.oci import REF_NAME, Index
from builder.store.content import ContentStore, atomic_output

def _tarinfo(name: str, size: int, *, directory: bool = False) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.size = 0 if directory else size
    ti.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    ti.mode = 0o755 if directory else 0o644
    ti.mtime = 0
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    return ti


def write_oci_tar(store: ContentStore, image: BuiltImage, sink: BinaryIO, *, tags: Iterable[str] = ()) -> None:
    """Stream an OCI image-layout tar: oci-layout, index.json, blobs (each blob once, sorted)."""
    tags = list(tags)
    descs = [replace(image.manifest_descriptor, annotations=((REF_NAME, t),)) for t in tags] or [image.manifest_descriptor]
    index = Index(manifests=tuple(descs)).to_bytes()
    blobs = sorted({image.manifest_descriptor.digest, image.config_descriptor.digest,
                    *(l.digest for l in image.manifest.layers)})
    with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT) as tf:
        for name, data in (("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'), ("index.json", index)):
            tf.addfile(_tarinfo(name, len(data)), io.BytesIO(data))
        for d in ("blobs/", "blobs/sha256/"):
            tf.addfile(_tarinfo(d, 0, directory=True))
        for dg in blobs:
            size = store.size(dg)
            with store.open_verified(dg, size) as f:     # a corrupt blob is never exported
                tf.addfile(_tarinfo(f"blobs/{dg.algorithm}/{dg.hex}", size), f)  # type: ignore[arg-type]


def write_oci_file(store: ContentStore, image: BuiltImage, dest: Path, *, tags: Iterable[str] = ()) -> None:
    """write_oci_tar into `dest` via a temp file renamed into place."""
    with atomic_output(dest) as f:
        write_oci_tar(store, image, f, tags=tags)
