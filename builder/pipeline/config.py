"""The final image config: the frontend's config for the target, with history times from the
steps' cache records (so a fully cached rebuild reproduces the digest) or SOURCE_DATE_EPOCH."""
from __future__ import annotations

import datetime as dt
from dataclasses import replace
from typing import Mapping

from builder.image.digest import Digest
from builder.image.oci import History, ImageConfig
from builder.image.view import Chain
from builder.solve.graph import Target
from builder.solve.results import StepInfo


def epoch_time(source_date_epoch: int) -> str:
    return dt.datetime.fromtimestamp(source_date_epoch, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def image_config(target: Target, steps: Mapping[Digest, StepInfo], chain: Chain,
                 source_date_epoch: int | None, labels: Mapping[str, str] | None = None) -> ImageConfig:
    """`target.config` with `created` and one history entry per instruction (base image history
    first); empty_layer where a step made no layer. Always one non-empty entry per layer.
    `labels` (--label) are added to the config's labels, winning over the Dockerfile's."""
    base = target.config
    if labels:
        merged = {**dict(base.config.labels), **labels}
        base = replace(base, config=replace(base.config, labels=tuple(sorted(merged.items()))))
    hist: list[History] = list(target.base_history)
    times = [s.created for s in steps.values()]
    last = max(times) if times else (base.created or "1970-01-01T00:00:00Z")
    if source_date_epoch is not None:
        last = epoch_time(source_date_epoch)
    for hs in target.history:
        info = steps.get(hs.vertex.digest) if hs.vertex is not None else None
        created = info.created if info and source_date_epoch is None else last
        hist.append(History(created=created, created_by=hs.created_by,
                            empty_layer=info is None or info.layer is None))
    if sum(1 for h in hist if not h.empty_layer) != len(chain):
        # The frontend's history does not line up with the layers (should not happen): keep the
        # image valid rather than wrong — one entry per layer.
        hist = [History(created=last, created_by="pybuild layer") for _ in chain]
    return replace(base, history=tuple(hist), created=last)
