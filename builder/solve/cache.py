"""Cache keys and the cache index.

key = sha256(canonical_json({"v": CACHE_FORMAT, "op": cache_map.digest, "deps": [...]}))

The index is one small JSON file per key under <root>/cache/, written with write-temp-then-rename:
no journal is needed, a torn write cannot happen, and a lost record only costs a rebuild. A record
keeps the layer the step produced (or none) and the time the step really ran, so a fully cached
rebuild reproduces the same image digest.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder.image.digest import Digest
from builder.image.view import LayerRef
from builder.image.oci import Descriptor, canonical_json
from builder.store.content import atomic_write

CACHE_FORMAT = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheDep:
    """One input of a cache key: the input's own key, plus an optional selector (the COPY source
    paths) and content hash of the selected files."""
    key: str
    selector: tuple[str, ...] = ()
    content: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheMap:
    """The op's definition minus non-semantic fields, digested; and its dependencies."""
    digest: str
    deps: tuple[CacheDep, ...] = ()


def op_digest(op_json: Any) -> str:
    return "sha256:" + hashlib.sha256(canonical_json(op_json)).hexdigest()


def cache_key(cm: CacheMap) -> str:
    payload = {"v": CACHE_FORMAT, "op": cm.digest,
               "deps": [{"key": d.key, "sel": list(d.selector), "content": d.content} for d in cm.deps]}
    return hashlib.sha256(canonical_json(payload)).hexdigest()


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheRecord:
    key: str
    layer: LayerRef | None
    created: str          # RFC 3339 time the step really ran
    description: str = ""

    def to_json(self) -> bytes:
        d: dict[str, Any] = {"key": self.key, "created": self.created, "description": self.description}
        if self.layer is not None:
            d["layer"] = {"descriptor": self.layer.descriptor.to_json(), "diff_id": str(self.layer.diff_id)}
        return canonical_json(d)

    @classmethod
    def from_json(cls, raw: bytes) -> "CacheRecord":
        d = json.loads(raw)
        layer = None
        if d.get("layer"):
            layer = LayerRef(descriptor=Descriptor.from_json(d["layer"]["descriptor"]),
                             diff_id=Digest.parse(d["layer"]["diff_id"]))
        return cls(key=d["key"], layer=layer, created=d.get("created", ""), description=d.get("description", ""))


class CacheIndex:
    def __init__(self, root: Path) -> None:
        self.dir = Path(root) / "cache"
        self.dir.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
            raise ValueError(f"invalid cache key {key!r}")
        return self.dir / key[:2] / key

    def get(self, key: str) -> CacheRecord | None:
        """The record for key, or None. A corrupt record counts as a miss (it is rebuildable)."""
        try:
            raw = self._path(key).read_bytes()
            return CacheRecord.from_json(raw)
        except (FileNotFoundError, ValueError, KeyError):
            return None

    def put(self, rec: CacheRecord) -> None:
        atomic_write(self._path(rec.key), rec.to_json())



class MissExplainer:
    """Remembers the last cache map seen for each step name, so a miss can say *why*: the
    instruction changed, an input step changed, or the files a COPY selects changed. Best effort:
    one small file per step name, overwritten atomically; a lost file only loses the reason."""

    def __init__(self, root: Path) -> None:
        self.dir = Path(root) / "cache" / "why"

    def _path(self, name: str) -> Path:
        return self.dir / hashlib.sha256(name.encode()).hexdigest()

    def remember(self, name: str, cm: CacheMap) -> None:
        if not name:
            return
        payload = {"op": cm.digest, "deps": [[d.key, list(d.selector), d.content] for d in cm.deps]}
        atomic_write(self._path(name), canonical_json(payload))

    def explain(self, name: str, cm: CacheMap) -> str:
        try:
            prev = json.loads(self._path(name).read_bytes())
        except (FileNotFoundError, ValueError):
            return "not built before"
        if prev.get("op") != cm.digest:
            return "the instruction or its options changed"
        old = prev.get("deps") or []
        if len(old) != len(cm.deps):
            return "its inputs changed"
        for i, (o, d) in enumerate(zip(old, cm.deps)):
            if o[1:] == [list(d.selector), d.content] and o[0] == d.key:
                continue
            if d.content and o[2] != d.content:
                return f"the files it uses changed ({', '.join(d.selector)})"
            return "the previous step changed" if i == 0 else f"input {i} changed"
        return "the cache record is gone (pruned or built elsewhere)"
