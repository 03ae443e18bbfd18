"""Bring an image into the content store: from a registry, from the store itself, or from an OCI
image layout directory.

Every blob is verified on write (`store.writer(expected, expected_size)`); blobs already in the
store are not fetched again. Order: manifest, config, then layers base first. Nothing is tagged:
callers decide names.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from dataclasses import dataclass, replace
from pathlib import Path

from builder.image.digest import Digest
from builder.errors import RegistryError, StoreError
from builder.image.oci import MAX_MANIFEST_SIZE, REF_NAME, Descriptor, ImageConfig, Index, Manifest, MediaType, Platform, pick_platform
from builder.image.reference import Reference
from builder.image.view import Chain, LayerRef
from builder.store.content import ContentStore

if TYPE_CHECKING:   # the registry client (and requests) load only when a registry is used
    from builder.registry.client import RegistryClient

_MAX_CONFIG_SIZE = 16 << 20
_MAX_DEPTH = 4


@dataclass(frozen=True, slots=True, kw_only=True)
class PulledImage:
    """An image whose manifest, config and layer blobs are all in the content store. `ref` is a
    label for messages (the reference, `oci-layout://…` or the manifest digest)."""
    ref: str
    manifest_descriptor: Descriptor
    manifest: Manifest
    config: ImageConfig
    raw_config: bytes

    def chain(self) -> Chain:
        """The image's layers base first, each with its diff_id from the config; RegistryError
        when the manifest's layer count and the config's diff_id count differ."""
        layers, diff_ids = self.manifest.layers, self.config.diff_ids
        if len(layers) != len(diff_ids):
            raise RegistryError(f"{self.ref}: {len(layers)} layers but {len(diff_ids)} diff_ids")
        return tuple(LayerRef(descriptor=d, diff_id=i) for d, i in zip(layers, diff_ids))


def pull_image(client: RegistryClient, store: ContentStore, ref: Reference, platform: Platform) -> PulledImage:
    """Resolve `ref` for `platform` and copy manifest, config and layers into `store`: from each of
    the registry's mirrors in turn (same repository path), then from the registry itself."""
    for mirror in client.mirrors(ref.registry):
        try:
            return _pull(client, store, replace(ref, registry=mirror), platform)
        except RegistryError:
            continue            # a mirror that fails or lacks the image: the next one, then the registry
    return _pull(client, store, ref, platform)


def _pull(client: RegistryClient, store: ContentStore, ref: Reference, platform: Platform) -> PulledImage:
    desc, raw_manifest = client.resolve_bytes(ref, platform)
    manifest = _parse_manifest(raw_manifest, str(ref))
    _store_verified_bytes(store, desc, raw_manifest)
    for blob in (manifest.config, *manifest.layers):
        if not store.has(blob.digest):
            with store.writer(blob.digest, blob.size) as w:
                client.fetch_blob(ref, blob, w)
                w.commit()
    return _finish(store, str(ref), desc, manifest)


def load_from_store(store: ContentStore, manifest_descriptor: Descriptor, *, ref: str = "") -> PulledImage:
    """The image whose manifest `manifest_descriptor` names, read from `store`; raise StoreError
    when the manifest, config or any layer blob is missing."""
    raw = store.read_bytes(manifest_descriptor.digest, max_size=MAX_MANIFEST_SIZE)
    manifest = _parse_manifest(raw, ref or str(manifest_descriptor.digest))
    for layer in manifest.layers:
        if not store.has(layer.digest):
            raise StoreError(f"layer {layer.digest} of {ref or manifest_descriptor.digest} is not in the store")
    return _finish(store, ref or str(manifest_descriptor.digest), manifest_descriptor, manifest)


def load_oci_layout(path: Path, tag: str, platform: Platform, store: ContentStore) -> PulledImage:
    """Import image `tag` (the `org.opencontainers.image.ref.name` annotation in index.json; with
    an empty tag, the only entry) of the OCI layout at `path` into `store`, choosing `platform`
    through nested indexes. Blobs are verified while copied."""
    path = Path(path)
    label = f"oci-layout://{path}:{tag}" if tag else f"oci-layout://{path}"
    try:
        top = Index.from_bytes((path / "index.json").read_bytes())
    except FileNotFoundError as e:
        raise StoreError(f"{path}: not an OCI layout (no index.json)") from e
    except (ValueError, KeyError, TypeError) as e:
        raise StoreError(f"{path}/index.json: malformed: {e}") from e
    desc = _pick_tagged(top, tag, platform, label)
    raw = b""
    for _ in range(_MAX_DEPTH):
        raw = _read_layout_blob(path, desc, MAX_MANIFEST_SIZE)
        if desc.media_type not in MediaType.INDEXES:
            break
        child = pick_platform(Index.from_bytes(raw), platform)
        if child is None:
            raise StoreError(f"{label}: no manifest for platform {platform}")
        desc = child
    else:
        raise StoreError(f"{label}: image indexes nested too deep")
    manifest = _parse_manifest(raw, label)
    _store_verified_bytes(store, desc, raw)
    for blob in (manifest.config, *manifest.layers):
        if store.has(blob.digest):
            continue
        src = _layout_blob_path(path, blob.digest)
        try:
            with open(src, "rb") as f:
                store.put(f, blob.digest, blob.size)
        except FileNotFoundError as e:
            raise StoreError(f"{label}: blob {blob.digest} missing from the layout") from e
    return _finish(store, label, desc, manifest)


# ---------------------------------------------------------------------- helpers
def _finish(store: ContentStore, ref: str, desc: Descriptor, manifest: Manifest) -> PulledImage:
    raw_config = store.read_bytes(manifest.config.digest, max_size=_MAX_CONFIG_SIZE)
    if len(raw_config) != manifest.config.size:
        raise StoreError(f"{ref}: config {manifest.config.digest} is {len(raw_config)} bytes, "
                         f"manifest says {manifest.config.size}")
    try:
        config = ImageConfig.from_bytes(raw_config)
    except (ValueError, KeyError, TypeError) as e:
        raise StoreError(f"{ref}: malformed image config {manifest.config.digest}: {e}") from e
    if len(config.diff_ids) != len(manifest.layers):
        raise StoreError(f"{ref}: config lists {len(config.diff_ids)} diff_ids for {len(manifest.layers)} layers")
    return PulledImage(ref=ref, manifest_descriptor=desc, manifest=manifest, config=config, raw_config=raw_config)


def _parse_manifest(raw: bytes, where: str) -> Manifest:
    try:
        return Manifest.from_bytes(raw)
    except (ValueError, KeyError, TypeError) as e:
        raise RegistryError(f"{where}: malformed image manifest: {e}") from e


def _store_verified_bytes(store: ContentStore, desc: Descriptor, raw: bytes) -> None:
    if store.has(desc.digest):
        return
    with store.writer(desc.digest, desc.size) as w:
        w.write(raw)
        w.commit()


def _pick_tagged(top: Index, tag: str, platform: Platform, label: str) -> Descriptor:
    if tag:
        cands = [m for m in top.manifests if dict(m.annotations).get(REF_NAME) == tag]
    else:
        cands = list(top.manifests)
    if not cands:
        names = sorted({dict(m.annotations).get(REF_NAME, "") for m in top.manifests} - {""})
        raise StoreError(f"{label}: tag not found (tags: {', '.join(names) or 'none'})")
    if len(cands) == 1:
        return cands[0]
    chosen = pick_platform(Index(manifests=tuple(cands)), platform)
    if chosen is None:
        raise StoreError(f"{label}: {len(cands)} entries and none for platform {platform}")
    return chosen


def _layout_blob_path(path: Path, digest: Digest) -> Path:
    return path / "blobs" / digest.algorithm / digest.hex   # Digest validated: no traversal


def _read_layout_blob(path: Path, desc: Descriptor, cap: int) -> bytes:
    if desc.size > cap:
        raise StoreError(f"{path}: {desc.digest} is {desc.size} bytes, above the {cap}-byte manifest cap")
    try:
        with open(_layout_blob_path(path, desc.digest), "rb") as f:
            data = f.read(cap + 1)
    except FileNotFoundError as e:
        raise StoreError(f"{path}: blob {desc.digest} missing from the layout") from e
    h = desc.digest.hasher()
    h.update(data)
    if len(data) != desc.size or h.hexdigest() != desc.digest.hex:
        raise StoreError(f"{path}: blob {desc.digest} does not match its descriptor")
    return data

