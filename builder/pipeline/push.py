"""The build's `Pusher`: an exported image to registry references through the build's registry
client, base-image blobs cross-mounted from the repository they were pulled from."""
from __future__ import annotations

from typing import Mapping

from builder.export.assemble import BuiltImage
from builder.export.dispatch import Pusher
from builder.image.digest import Digest
from builder.image.reference import Reference
from builder.pipeline.env import BuildEnv
from builder.progress import MessageEvent


def registry_pusher(env: BuildEnv, origins: Mapping[Digest, Reference]) -> Pusher:
    """A Pusher for `env` (its registry client, store and progress sink)."""
    def push(image: BuiltImage, names: tuple[str, ...]) -> None:
        from builder.registry.push import PushImage, PushOptions, push_image
        refs = [Reference.parse(n) for n in names]
        blobs = (image.config_descriptor, *image.manifest.layers)
        todo = PushImage(manifest=image.manifest_descriptor, blobs=blobs, origins=origins)
        env.req.progress(MessageEvent(text=f"pushing {image.manifest_descriptor.digest} to {', '.join(map(str, refs))}"))
        done = push_image(env.registry(), env.store, todo, refs, PushOptions())
        counts: dict[str, int] = {}
        for b in done:
            counts[b.how] = counts.get(b.how, 0) + 1
        summary = ", ".join(f"{n} {how}" for how, n in sorted(counts.items()))
        env.req.progress(MessageEvent(text=f"pushed {', '.join(map(str, refs))} (blobs: {summary})"))
    return push
