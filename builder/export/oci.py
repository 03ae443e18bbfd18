"""Exporters: assemble the image (config, manifest) in the store, then write it out.

Sinks over one image view: the OCI image-layout tar, the local store (tags). Root filesystem
outputs (type=tar, type=local) go through the sandbox worker, which can read snapshot contents.
"""
from __future__ import annotations

import io
import json
import tarfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO, Iterable

from builder.layer.compression import Compressor, open_uncompressed
from builder.image.view import Chain, LayerRef
from builder.image.oci import REF_NAME, Compression, Descriptor, ImageConfig, Index, Manifest, MediaType, canonical_json
from builder.store.content import ContentStore, atomic_output, atomic_write

CHUNK = 1 << 20


@dataclass(frozen=True, slots=True, kw_only=True)
class BuiltImage:
    manifest_descriptor: Descriptor
    manifest: Manifest
    config_descriptor: Descriptor
    config: ImageConfig


def assemble_image(store: ContentStore, chain: Chain, config: ImageConfig) -> BuiltImage:
    """Write config and manifest blobs for `chain` + `config` (diff_ids taken from the chain)."""
    cfg = replace(config, diff_ids=tuple(l.diff_id for l in chain))
    raw_cfg = cfg.to_bytes()
    cd, cs = store.put_bytes(raw_cfg)
    cdesc = Descriptor(media_type=MediaType.OCI_CONFIG, digest=cd, size=cs)
    man = Manifest(config=cdesc, layers=tuple(l.descriptor for l in chain))
    raw_man = man.to_bytes()
    md, ms = store.put_bytes(raw_man)
    mdesc = Descriptor(media_type=MediaType.OCI_MANIFEST, digest=md, size=ms, platform=cfg.platform)
    return BuiltImage(manifest_descriptor=mdesc, manifest=man, config_descriptor=cdesc, config=cfg)


# ---------------------------------------------------------------------- recompression

def recompress(store: ContentStore, layer: LayerRef, compression: Compression) -> LayerRef:
    """The same layer (same diff_id) with another compression, stored once and remembered."""
    if MediaType.compression(layer.descriptor.media_type) == compression:
        return layer
    memo = store.root / "converted" / f"{layer.descriptor.digest.hex}-{compression}.json"
    try:
        desc = Descriptor.from_json(json.loads(memo.read_bytes()))
        if store.has(desc.digest):
            return LayerRef(descriptor=desc, diff_id=layer.diff_id)
    except (FileNotFoundError, ValueError, KeyError):
        pass
    with store.open(layer.descriptor.digest) as raw, store.writer() as w:
        src = open_uncompressed(raw)
        c = Compressor(w, compression)
        while True:
            b = src.read(CHUNK)
            if not b:
                break
            c.write(b)
        c.close()
        d, size = w.commit()
    desc = Descriptor(media_type=MediaType.oci_layer(compression), digest=d, size=size)
    atomic_write(memo, canonical_json(desc.to_json()))
    return LayerRef(descriptor=desc, diff_id=layer.diff_id)


# ---------------------------------------------------------------------- OCI layout tar

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
