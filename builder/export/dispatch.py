"""Every requested output from the one solved image: the image store when none is asked for.

Pushing is injected (`ExportInput.push`, a `Pusher`): the registry client lives above the export
folder's imports, and the face wires it."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import AbstractSet, BinaryIO, Protocol

from builder.errors import UsageError
from builder.export.assemble import BuiltImage, assemble_image, docker_media_types_possible, recompress
from builder.export.docker import DEFAULT_DOCKER_SOCKET, load_into_engine, write_docker_file, write_docker_tar
from builder.export.oci import LayoutNotes, Pairs, write_oci_dir, write_oci_file, write_oci_tar
from builder.export.rootfs import write_rootfs_dir, write_rootfs_tar
from builder.export.store import tag_image
from builder.image.digest import Digest
from builder.image.oci import ImageConfig
from builder.image.reference import Reference
from builder.image.view import Chain
from builder.request import Annotation, AnnotationLevel, OutputSpec
from builder.sandbox.executor import Executor
from builder.store.content import ContentStore


class Pusher(Protocol):
    def __call__(self, image: BuiltImage, names: tuple[str, ...]) -> None:
        """Push `image` (all its blobs are in the store) to every reference in `names`."""
        ...


@dataclass(frozen=True, kw_only=True)
class ExportInput:
    """The solved image: its layers, its config, which layers this build made (those may be
    recompressed for an output; base layers are exported from their original blobs)."""
    chain: Chain
    config: ImageConfig
    built: AbstractSet[Digest]
    tags: tuple[str, ...]
    stdout: BinaryIO | None
    push: Pusher | None = None
    docker_socket: str = DEFAULT_DOCKER_SOCKET
    annotations: tuple[Annotation, ...] = ()

    def notes(self, level: AnnotationLevel) -> Pairs:
        return tuple((a.key, a.value) for a in self.annotations if a.level == level)

    def layout_notes(self) -> LayoutNotes:
        return LayoutNotes(index=self.notes("index"), descriptor=self.notes("manifest-descriptor"))


@dataclass(frozen=True, kw_only=True)
class Exported:
    """The image the outputs describe (the last image output's) and every name it was given
    (stored, pushed or written into a docker tarball), in order, without repeats."""
    image: BuiltImage
    names: tuple[str, ...]


def export_all(store: ContentStore, executor: Executor, outputs: tuple[OutputSpec, ...],
               src: ExportInput) -> Exported:
    """Write every output in order; the image they describe (assembled once per compression)."""
    image, names = None, []
    for out in outputs or (OutputSpec(type="image"),):
        got = _export(store, executor, out, src)
        if got is not None:
            image = got.image
            names += [n for n in got.names if n not in names]
    if image is None:
        image = assemble_image(store, src.chain, src.config, annotations=src.notes("manifest"))
    return Exported(image=image, names=tuple(names))


def _image(store: ContentStore, out: OutputSpec, src: ExportInput, *, compress: bool = True) -> BuiltImage:
    """The image for `out`: layers this build made in `out`'s compression (when `compress`), base
    layers as they are; media types as `out.oci_mediatypes` asks (Docker's by default for docker)."""
    chain = tuple(recompress(store, l, out.compression)
                  if compress and (out.force_compression or l.descriptor.digest in src.built) else l
                  for l in src.chain)
    oci = out.oci_mediatypes if out.oci_mediatypes is not None else out.type != "docker"
    if not oci and not docker_media_types_possible(chain):
        if out.oci_mediatypes is False:
            raise UsageError(f"--output type={out.type},oci-mediatypes=false: zstd layers have no Docker media type")
        oci = True
    return assemble_image(store, chain, src.config, docker_types=not oci, annotations=src.notes("manifest"))


def _export(store: ContentStore, executor: Executor, out: OutputSpec, src: ExportInput) -> Exported | None:
    names = tuple(dict.fromkeys(str(Reference.parse(n)) for n in (*src.tags, *out.names)))
    if out.type in ("image", "registry"):
        image = _image(store, out, src, compress=out.pushes)
        if out.type == "image":
            tag_image(store, image, names)
        if out.pushes:
            if not names:
                raise UsageError(f"--output type={out.type}: pushing needs a name (-t or name=)")
            if src.push is None:
                raise UsageError("this build cannot push (no registry access was given)")
            src.push(image, names)
        return Exported(image=image, names=names)
    if out.type in ("oci", "docker"):
        image = _image(store, out, src)
        _write_archive(store, out, image, src, names)
        return Exported(image=image, names=names if out.type == "docker" else ())
    if out.type == "tar":
        write_rootfs_tar(executor, src.chain, out.dest, src.stdout)
        return None
    if out.type == "local":
        write_rootfs_dir(executor, src.chain, out.dest)
        return None
    raise UsageError(f"unsupported output type {out.type!r}")


def _write_archive(store: ContentStore, out: OutputSpec, image: BuiltImage, src: ExportInput,
                   names: tuple[str, ...]) -> None:
    if out.type == "docker":
        if not out.dest:
            load_into_engine(store, image, names=names, socket_path=src.docker_socket)
        elif out.dest == "-":
            write_docker_tar(store, image, _stdout(src), names=names, notes=src.layout_notes())
        else:
            write_docker_file(store, image, Path(out.dest), names=names, notes=src.layout_notes())
    elif not out.tar:
        write_oci_dir(store, image, Path(out.dest), tags=src.tags, notes=src.layout_notes())
    elif out.dest == "-":
        write_oci_tar(store, image, _stdout(src), tags=src.tags, notes=src.layout_notes())
    else:
        write_oci_file(store, image, Path(out.dest), tags=src.tags, notes=src.layout_notes())


def _stdout(src: ExportInput) -> BinaryIO:
    if src.stdout is None:
        raise UsageError("output to '-' needs a stdout stream")
    return src.stdout
