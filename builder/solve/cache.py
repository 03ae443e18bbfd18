"""Cache keys and the cache index.

key = sha256(canonical_json({"v": CACHE_FORMAT, "op": cache_map.digest, "deps": [...]}))

The index is one small JSON file per key under <root>/cache/, written with write-temp-then-rename:
no journal is needed, a torn write cannot happen, and a lost record only costs a rebuild. A record
keeps the layer the step produced (or none) and the time the step really ran, so a fully cached
rebuild reproduces the same image digest. A record that does not parse into its type is a miss.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from builder.image.digest import Digest
from builder.image.oci import Descriptor, canonical_json
from builder.image.view import LayerRef
from builder.store.content import atomic_write

CACHE_FORMAT = 1
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True, slots=True, order=True)
class CacheKey:
    """A cache key: 64 lowercase hex digits (the sha256 of a canonical cache map)."""
    hex: str

    def __post_init__(self) -> None:
        if not _HEX64.match(self.hex):
            raise ValueError(f"invalid cache key {self.hex!r}")

    def __str__(self) -> str:
        return self.hex

    @classmethod
    def of(cls, payload: bytes) -> "CacheKey":
        return cls(hashlib.sha256(payload).hexdigest())


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheDep:
    """One input of a cache key: the input's own key, plus an optional selector (the paths an op
    reads from it, for messages) and the content hash of what it selects."""
    key: CacheKey
    selector: tuple[str, ...] = ()
    content: Digest | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheMap:
    """The op's definition minus non-semantic fields, digested; and its dependencies."""
    digest: Digest
    deps: tuple[CacheDep, ...] = ()


def op_digest(op_json: Any) -> Digest:
    """The digest of an op's canonical JSON form."""
    return Digest.of_bytes(canonical_json(op_json))


def cache_key(cm: CacheMap) -> CacheKey:
    payload = {"v": CACHE_FORMAT, "op": str(cm.digest),
               "deps": [{"key": str(d.key), "sel": list(d.selector), "content": str(d.content or "")}
                        for d in cm.deps]}
    return CacheKey.of(canonical_json(payload))


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheRecord:
    key: CacheKey
    layer: LayerRef | None
    created: str          # RFC 3339 time the step really ran
    description: str = ""

    def to_json(self) -> bytes:
        d: dict[str, Any] = {"key": str(self.key), "created": self.created, "description": self.description}
        if self.layer is not None:
            d["layer"] = {"descriptor": self.layer.descriptor.to_json(), "diff_id": str(self.layer.diff_id)}
        return canonical_json(d)

    @classmethod
    def from_json(cls, raw: bytes) -> "CacheRecord":
        """Parse a record; ValueError when it does not have the record's shape."""
        try:
            d = json.loads(raw)
            layer = None
            if d.get("layer"):
                layer = LayerRef(descriptor=Descriptor.from_json(d["layer"]["descriptor"]),
                                 diff_id=Digest.parse(d["layer"]["diff_id"]))
            created, description = d.get("created", ""), d.get("description", "")
            if not isinstance(created, str) or not isinstance(description, str):
                raise ValueError("created/description are not strings")
            return cls(key=CacheKey(d["key"]), layer=layer, created=created, description=description)
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"malformed cache record: {e}") from e


class CacheIndex:
    """key → CacheRecord, one file per key under <root>/cache/. Safe across processes."""

    def __init__(self, root: Path) -> None:
        self.dir = Path(root) / "cache"
        self.dir.mkdir(parents=True, exist_ok=True)

    def _path(self, key: CacheKey) -> Path:
        return self.dir / key.hex[:2] / key.hex

    def get(self, key: CacheKey) -> CacheRecord | None:
        """The record for key, or None. A corrupt record counts as a miss (it is rebuildable)."""
        try:
            rec = CacheRecord.from_json(self._path(key).read_bytes())
        except (OSError, ValueError):
            return None
        return rec if rec.key == key else None

    def put(self, rec: CacheRecord) -> None:
        atomic_write(self._path(rec.key), rec.to_json())
