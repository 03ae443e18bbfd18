"""The OCI image-layout tar output (`-o type=oci,dest=FILE|-`): oci-layout, index.json and every
blob once, sorted; each blob verified as it leaves the store."""
from __future__ import annotations

import io
import shutil
import tarfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO, Iterable

from builder.export.assemble import BuiltImage
from builder.errors import StoreError
from builder.image.digest import Digest
from builder.image.oci import REF_NAME, Descriptor, Index
from builder.store.content import ContentStore, atomic_output, atomic_write

OCI_LAYOUT = b'{"imageLayoutVersion":"1.0.0"}'
Pairs = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class LayoutNotes:
    """--annotation at the layout's levels: on index.json itself and on each manifest descriptor."""
    index: Pairs = ()
    descriptor: Pairs = ()

    def entry(self, image: BuiltImage, own: Pairs) -> Descriptor:
        """The image's descriptor in index.json with the descriptor annotations and `own` (which win)."""
        merged = {**dict(self.descriptor), **dict(own)}
        return replace(image.manifest_descriptor, annotations=tuple(sorted(merged.items())))


def _tarinfo(name: str, size: int, *, directory: bool = False) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.size = 0 if directory else size
    ti.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    ti.mode = 0o755 if directory else 0o644
    ti.mtime = 0
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    return ti


def layout_blobs(image: BuiltImage) -> list[Digest]:
    """Every blob of the image once, sorted: manifest, config and layers."""
    return sorted({image.manifest_descriptor.digest, image.config_descriptor.digest,
                   *(l.digest for l in image.manifest.layers)})


def layout_index(image: BuiltImage, annotations: Iterable[Pairs], notes: LayoutNotes = LayoutNotes()) -> bytes:
    """index.json of a layout holding `image` once per annotation set (once without any)."""
    descs = [notes.entry(image, a) for a in annotations] or [notes.entry(image, ())]
    return Index(manifests=tuple(descs), annotations=notes.index).to_bytes()


def write_layout_tar(store: ContentStore, image: BuiltImage, sink: BinaryIO, files: Iterable[tuple[str, bytes]]) -> None:
    """Stream a tar of `files` (oci-layout, index.json, …) then `blobs/` with every blob of
    `image`, each verified as it leaves the store."""
    with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT) as tf:
        for name, data in files:
            tf.addfile(_tarinfo(name, len(data)), io.BytesIO(data))
        for d in ("blobs/", "blobs/sha256/"):
            tf.addfile(_tarinfo(d, 0, directory=True))
        for dg in layout_blobs(image):
            size = store.size(dg)
            with store.open_verified(dg, size) as f:     # a corrupt blob is never exported
                tf.addfile(_tarinfo(f"blobs/{dg.algorithm}/{dg.hex}", size), f)  # type: ignore[arg-type]


def write_oci_tar(store: ContentStore, image: BuiltImage, sink: BinaryIO, *, tags: Iterable[str] = (),
                  notes: LayoutNotes = LayoutNotes()) -> None:
    """Stream an OCI image-layout tar: oci-layout, index.json, blobs (each blob once, sorted)."""
    index = layout_index(image, [((REF_NAME, t),) for t in tags], notes)
    write_layout_tar(store, image, sink, [("oci-layout", OCI_LAYOUT), ("index.json", index)])


def write_oci_file(store: ContentStore, image: BuiltImage, dest: Path, *, tags: Iterable[str] = (),
                   notes: LayoutNotes = LayoutNotes()) -> None:
    """write_oci_tar into `dest` via a temp file renamed into place."""
    with atomic_output(dest) as f:
        write_oci_tar(store, image, f, tags=tags, notes=notes)


def write_oci_dir(store: ContentStore, image: BuiltImage, dest: Path, *, tags: Iterable[str] = (),
                  notes: LayoutNotes = LayoutNotes()) -> None:
    """An OCI image layout directory at `dest` (`-o type=oci,dest=DIR,tar=false`), created if
    missing. Blobs already there are kept; index.json keeps the entries of other tags and is
    replaced last (atomically), so a reader never sees an index naming a missing blob."""
    dest.mkdir(parents=True, exist_ok=True)
    blobs = dest / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    for dg in layout_blobs(image):
        target = blobs / dg.hex
        size = store.size(dg)
        if target.is_file() and target.stat().st_size == size:
            continue
        with store.open_verified(dg, size) as src, atomic_output(target) as out:
            shutil.copyfileobj(src, out, 1 << 20)       # type: ignore[misc]
    tags = list(tags)
    mine = [notes.entry(image, ((REF_NAME, t),)) for t in tags] or [notes.entry(image, ())]
    old = _old_index(dest)
    keep = [d for d in old.manifests if dict(d.annotations).get(REF_NAME) not in tags and d not in mine]
    atomic_write(dest / "oci-layout", OCI_LAYOUT)
    index = Index(manifests=tuple(keep + mine), annotations=tuple(sorted({**dict(old.annotations), **dict(notes.index)}.items())))
    atomic_write(dest / "index.json", index.to_bytes())


def _old_index(dest: Path) -> Index:
    try:
        return Index.from_bytes((dest / "index.json").read_bytes())
    except FileNotFoundError:
        return Index(manifests=())
    except (ValueError, KeyError, TypeError) as e:
        raise StoreError(f"{dest}/index.json is not an OCI image index: {e}") from e
