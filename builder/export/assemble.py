"""Assemble an image in the content store (config and manifest blobs over a chain of layers), and
recompress a stored layer for an output that wants another compression (verified while read)."""
from __future__ import annotations

import json
from typing import BinaryIO, cast
from dataclasses import dataclass, replace

from builder.image.oci import Compression, Descriptor, ImageConfig, Manifest, MediaType, canonical_json
from builder.image.view import Chain, LayerRef
from builder.layer.compression import Compressor, open_uncompressed
from builder.layer.limits import CappedReader, ExpandLimit
from builder.store.content import ContentStore, VerifyingReader, atomic_write

CHUNK = 1 << 20


@dataclass(frozen=True, slots=True, kw_only=True)
class BuiltImage:
    manifest_descriptor: Descriptor
    manifest: Manifest
    config_descriptor: Descriptor
    config: ImageConfig


_DOCKER_LAYERS = {MediaType.OCI_LAYER_GZIP: MediaType.DOCKER_LAYER_GZIP, MediaType.OCI_LAYER: MediaType.DOCKER_LAYER}


def docker_media_types_possible(chain: Chain) -> bool:
    """Whether every layer has a Docker media type (zstd and foreign types have none)."""
    return all(l.descriptor.media_type in _DOCKER_LAYERS or l.descriptor.media_type.startswith("application/vnd.docker.")
               for l in chain)


def assemble_image(store: ContentStore, chain: Chain, config: ImageConfig, *, docker_types: bool = False,
                   annotations: tuple[tuple[str, str], ...] = ()) -> BuiltImage:
    """Write config and manifest blobs for `chain` + `config` (diff_ids taken from the chain).
    `docker_types`: Docker schema 2 media types for manifest, config and layers (the same layer
    blobs; the caller checks `docker_media_types_possible`), else OCI's. `annotations` go into
    the manifest."""
    cfg = replace(config, diff_ids=tuple(l.diff_id for l in chain))
    raw_cfg = cfg.to_bytes()
    cd, cs = store.put_bytes(raw_cfg)
    cdesc = Descriptor(media_type=MediaType.DOCKER_CONFIG if docker_types else MediaType.OCI_CONFIG, digest=cd, size=cs)
    layers = tuple(replace(l.descriptor, media_type=_DOCKER_LAYERS.get(l.descriptor.media_type, l.descriptor.media_type))
                   if docker_types else l.descriptor for l in chain)
    man = Manifest(config=cdesc, layers=layers, annotations=tuple(sorted(annotations)),
                   media_type=MediaType.DOCKER_MANIFEST if docker_types else MediaType.OCI_MANIFEST)
    raw_man = man.to_bytes()
    md, ms = store.put_bytes(raw_man)
    mdesc = Descriptor(media_type=man.media_type, digest=md, size=ms, platform=cfg.platform)
    return BuiltImage(manifest_descriptor=mdesc, manifest=man, config_descriptor=cdesc, config=cfg)


def recompress(store: ContentStore, layer: LayerRef, compression: Compression,
               limit: ExpandLimit = ExpandLimit()) -> LayerRef:
    """The same layer (same diff_id) with another compression, stored once and remembered. The
    stored blob is verified to its end, the uncompressed stream against the diff_id, and capped
    against decompression bombs (`limit`)."""
    if MediaType.compression(layer.descriptor.media_type) == compression:
        return layer
    memo = store.root / "converted" / f"{layer.descriptor.digest.hex}-{compression}.json"
    try:
        desc = Descriptor.from_json(json.loads(memo.read_bytes()))
        if store.has(desc.digest):
            return LayerRef(descriptor=desc, diff_id=layer.diff_id)
    except (FileNotFoundError, ValueError, KeyError):
        pass
    src_desc = layer.descriptor
    what = f"layer {src_desc.digest}"
    with store.open_verified(src_desc.digest, src_desc.size) as raw, store.writer() as w:   # never a replaced blob
        capped = CappedReader(open_uncompressed(raw), limit.budget(src_desc.size), what=what)
        tar = VerifyingReader(cast(BinaryIO, capped),
                              layer.diff_id, what=f"{what} (uncompressed)")     # the diff_id holds too
        c = Compressor(w, compression)
        while b := tar.read(CHUNK):
            c.write(b)
        c.close()
        while raw.read(CHUNK):          # to the end of the blob, so its digest is checked in full
            pass
        d, size = w.commit()
    desc = Descriptor(media_type=MediaType.oci_layer(compression), digest=d, size=size)
    atomic_write(memo, canonical_json(desc.to_json()))
    return LayerRef(descriptor=desc, diff_id=layer.diff_id)


