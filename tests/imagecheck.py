"""validate_image(): recompute every digest, size and diff_id of an OCI image-layout tar."""
from __future__ import annotations

import gzip
import hashlib
import json
import tarfile
from pathlib import Path

import zstandard


def _members(path: Path) -> dict[str, bytes]:
    out = {}
    with tarfile.open(path) as tf:
        for m in tf.getmembers():
            if m.isfile():
                out[m.name.lstrip("./")] = tf.extractfile(m).read()  # type: ignore[union-attr]
    return out


def _blob(files: dict[str, bytes], digest: str) -> bytes:
    alg, hx = digest.split(":")
    data = files[f"blobs/{alg}/{hx}"]
    assert hashlib.new(alg, data).hexdigest() == hx, f"blob {digest} does not match its digest"
    return data


def _uncompress(data: bytes) -> bytes:
    if data[:2] == b"\x1f\x8b":
        return gzip.decompress(data)
    if data[:4] == b"\x28\xb5\x2f\xfd":
        return zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=True).read()
    return data


def validate_image(path: Path) -> dict:
    """Check the whole image; return {"manifest": ..., "config": ..., "layers": [tar bytes]}."""
    files = _members(Path(path))
    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads(files["index.json"])
    assert index["schemaVersion"] == 2 and index["manifests"], "empty index"
    desc = index["manifests"][0]
    raw = _blob(files, desc["digest"])
    assert len(raw) == desc["size"]
    manifest = json.loads(raw)
    cfg_raw = _blob(files, manifest["config"]["digest"])
    assert len(cfg_raw) == manifest["config"]["size"]
    config = json.loads(cfg_raw)
    diff_ids = config["rootfs"]["diff_ids"]
    assert len(diff_ids) == len(manifest["layers"])
    layers = []
    for ldesc, diff_id in zip(manifest["layers"], diff_ids):
        data = _blob(files, ldesc["digest"])
        assert len(data) == ldesc["size"], f"layer {ldesc['digest']} size"
        tar = _uncompress(data)
        assert "sha256:" + hashlib.sha256(tar).hexdigest() == diff_id, "diff_id mismatch"
        layers.append(tar)
    hist = [h for h in config.get("history", []) if not h.get("empty_layer")]
    assert len(hist) == len(diff_ids), "history does not line up with the layers"
    return {"manifest": manifest, "config": config, "layers": layers, "digest": desc["digest"]}
