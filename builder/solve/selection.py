"""What an op reads from its directory inputs, and the cache dependencies that follow from it.

A `Selection` is one read of an input directory: the source paths (wildcards allowed), the COPY
--exclude patterns and whether a symlink named at the top is followed. The content hash of a
selection covers exactly what the op would read, so excluded files never change a key."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from builder.image.digest import Digest
from builder.image.view import ChainSource, HostDir, Source
from builder.solve.cache import CacheDep
from builder.solve.results import DirResult, Result


@dataclass(frozen=True, slots=True, kw_only=True)
class Selection:
    paths: tuple[str, ...]
    excludes: tuple[str, ...] = ()
    follow_symlinks: bool = True


Checksummer = Callable[[HostDir, Selection], Digest]


def input_deps(inputs: Sequence[Result], selections: Mapping[int, Sequence[Selection]],
               checksum: Checksummer) -> tuple[CacheDep, ...]:
    """One CacheDep per input: its key, and for a directory input that the op selects from, the
    paths it names and the content hash of every selection (combined when there are several)."""
    deps = []
    for idx, r in enumerate(inputs):
        sels = selections.get(idx, ())
        if not isinstance(r, DirResult) or not sels:
            deps.append(CacheDep(key=r.key))
            continue
        sums = [checksum(r.dir, s) for s in sels]
        content = sums[0] if len(sums) == 1 else Digest(
            "sha256", hashlib.sha256("\n".join(map(str, sums)).encode()).hexdigest())
        paths = tuple(p for s in sels for p in s.paths)
        deps.append(CacheDep(key=r.key, selector=paths, content=content))
    return tuple(deps)


def step_sources(inputs: Sequence[Result], read: set[int]) -> dict[int, Source]:
    """The sources a step reads (Copy.src, bind mount inputs) by input index: a directory input
    as it is, a root filesystem as an unchanged view of its chain. Input 0 is included only when
    the op reads it (e.g. `FROM p` then `COPY --from=p`: the source is the base itself)."""
    out: dict[int, Source] = {}
    for idx, r in enumerate(inputs):
        if idx == 0 and 0 not in read:
            continue
        out[idx] = r.dir if isinstance(r, DirResult) else ChainSource(chain=r.chain)
    return out
