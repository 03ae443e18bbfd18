"""Why a step missed the cache: the instruction changed, an input step changed, or the files a
COPY selects changed.

Remembers the last cache map seen for each step name. Best effort: one small file per step name,
overwritten atomically; a lost or unreadable file only loses the reason."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from builder.image.oci import canonical_json
from builder.solve.cache import CacheMap
from builder.store.content import atomic_write


def _dep_json(cm: CacheMap) -> list[list[object]]:
    return [[str(d.key), list(d.selector), str(d.content or "")] for d in cm.deps]


class MissExplainer:
    def __init__(self, root: Path) -> None:
        self.dir = Path(root) / "cache" / "why"

    def _path(self, name: str) -> Path:
        return self.dir / hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()

    def remember(self, name: str, cm: CacheMap) -> None:
        if not name:
            return
        atomic_write(self._path(name), canonical_json({"op": str(cm.digest), "deps": _dep_json(cm)}))

    def explain(self, name: str, cm: CacheMap) -> str:
        try:
            prev = json.loads(self._path(name).read_bytes())
            old = list(prev.get("deps") or [])
            op = prev.get("op")
        except (OSError, ValueError, AttributeError):
            return "not built before"
        if op != str(cm.digest):
            return "the instruction or its options changed"
        new = _dep_json(cm)
        if len(old) != len(new):
            return "its inputs changed"
        for i, (o, d) in enumerate(zip(old, new)):
            if o == d:
                continue
            if d[2] and (not isinstance(o, list) or len(o) < 3 or o[2] != d[2]):
                return f"the files it uses changed ({', '.join(cm.deps[i].selector)})"
            return "the previous step changed" if i == 0 else f"input {i} changed"
        return "the cache record is gone (pruned or built elsewhere)"
