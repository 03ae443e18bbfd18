"""The image store output (`-o type=image`, the default): the image's blobs are in the content
store already; this names it with every -t tag and `name=`."""
from __future__ import annotations

from typing import Iterable

from builder.export.assemble import BuiltImage
from builder.image.reference import Reference
from builder.store.content import ContentStore


def tag_image(store: ContentStore, image: BuiltImage, names: Iterable[str]) -> None:
    """Point every name (normalised: docker.io/library/…) at the image's manifest."""
    for name in names:
        store.tag(str(Reference.parse(name)), image.manifest_descriptor)
