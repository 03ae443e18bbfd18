"""Every requested output from the one solved image: the image store when none is asked for."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import AbstractSet, BinaryIO

from builder.errors import UsageError
from builder.export.assemble import BuiltImage, assemble_image, recompress
from builder.export.oci import write_oci_file, write_oci_tar
from builder.export.rootfs import write_rootfs_dir, write_rootfs_tar
from builder.export.store import tag_image
from builder.image.digest import Digest
from builder.image.oci import ImageConfig
from builder.image.view import Chain
from builder.request import OutputSpec
from builder.sandbox.executor import Executor
from builder.store.content import ContentStore


@dataclass(frozen=True, kw_only=True)
class ExportInput:
    """The solved image: its layers, its config, which layers this build made (those may be
    recompressed for an output; base layers are exported from their original blobs)."""
    chain: Chain
    config: ImageConfig
    built: AbstractSet[Digest]
    tags: tuple[str, ...]
    stdout: BinaryIO | None


def export_all(store: ContentStore, executor: Executor, outputs: tuple[OutputSpec, ...],
               src: ExportInput) -> BuiltImage:
    """Write every output in order; the image they describe (assembled once per compression)."""
    image = None
    for out in outputs or (OutputSpec(type="image"),):
        image = _export(store, executor, out, src) or image
    return image if image is not None else assemble_image(store, src.chain, src.config)


def _export(store: ContentStore, executor: Executor, out: OutputSpec, src: ExportInput) -> BuiltImage | None:
    if out.type == "image":
        image = assemble_image(store, src.chain, src.config)
        tag_image(store, image, (*src.tags, *out.names))
        return image
    if out.type == "oci":
        chain = tuple(recompress(store, l, out.compression) if l.descriptor.digest in src.built else l
                      for l in src.chain)
        image = assemble_image(store, chain, src.config)
        if out.dest == "-":
            write_oci_tar(store, image, _stdout(src), tags=src.tags)
        else:
            write_oci_file(store, image, Path(out.dest), tags=src.tags)
        return image
    if out.type == "tar":
        write_rootfs_tar(executor, src.chain, out.dest, src.stdout)
        return None
    if out.type == "local":
        write_rootfs_dir(executor, src.chain, out.dest)
        return None
    raise UsageError(f"unsupported output type {out.type!r}")


def _stdout(src: ExportInput) -> BinaryIO:
    if src.stdout is None:
        raise UsageError("output to '-' needs a stdout stream")
    return src.stdout
