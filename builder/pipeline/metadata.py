"""BuildKit's `--metadata-file` keys for a built image."""
from __future__ import annotations

from builder.export.assemble import BuiltImage


def build_metadata(image: BuiltImage, names: tuple[str, ...]) -> dict[str, object]:
    """`containerimage.digest`, `containerimage.config.digest`, `containerimage.descriptor` (the
    manifest's descriptor as JSON) and, when the image was named, `image.name` (comma-separated,
    as BuildKit writes it)."""
    d = image.manifest_descriptor
    meta: dict[str, object] = {
        "containerimage.digest": str(d.digest),
        "containerimage.config.digest": str(image.config_descriptor.digest),
        "containerimage.descriptor": {"mediaType": d.media_type, "digest": str(d.digest), "size": d.size},
    }
    if names:
        meta["image.name"] = ",".join(names)
    return meta
