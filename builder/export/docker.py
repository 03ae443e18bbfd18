"""The docker tarball output (`-o type=docker,dest=FILE|-[,name=REF]`): what `docker load`,
`podman load` and `skopeo copy docker-archive:` read. Like BuildKit's docker exporter it is an OCI
image layout (the image named in index.json by `io.containerd.image.name` and the tag) plus the
`manifest.json` of `docker save` (config, RepoTags, layer paths), so old and new loaders accept it."""
from __future__ import annotations

import json
from pathlib import Path
from typing import BinaryIO, Iterable

from builder.export.assemble import BuiltImage
from builder.export.oci import OCI_LAYOUT, layout_index, write_layout_tar
from builder.image.digest import Digest
from builder.image.oci import REF_NAME
from builder.image.reference import Reference
from builder.store.content import ContentStore, atomic_output

CONTAINERD_NAME = "io.containerd.image.name"


def docker_name(name: str) -> str:
    """The short name docker shows for `name`: `foo:latest` for docker.io/library/foo."""
    ref = Reference.parse(name)
    repo = ref.repository.removeprefix("library/") if ref.registry == "docker.io" else ref.repository
    short = repo if ref.registry == "docker.io" else f"{ref.registry}/{repo}"
    return f"{short}:{ref.tag or 'latest'}"


def _blob_path(d: Digest) -> str:
    return f"blobs/{d.algorithm}/{d.hex}"


def docker_manifest(image: BuiltImage, names: Iterable[str]) -> bytes:
    """`manifest.json` of `docker save` for `image` tagged with `names`."""
    entry = {"Config": _blob_path(image.config_descriptor.digest),
             "RepoTags": [docker_name(n) for n in names],
             "Layers": [_blob_path(l.digest) for l in image.manifest.layers]}
    return json.dumps([entry], separators=(",", ":")).encode()


def write_docker_tar(store: ContentStore, image: BuiltImage, sink: BinaryIO, *, names: Iterable[str] = ()) -> None:
    """Stream the docker tarball of `image` tagged `names` into `sink`."""
    names = list(names)
    annotations = [((CONTAINERD_NAME, str(Reference.parse(n))), (REF_NAME, Reference.parse(n).tag or "latest"))
                   for n in names]
    files = [("oci-layout", OCI_LAYOUT), ("index.json", layout_index(image, annotations)),
             ("manifest.json", docker_manifest(image, names))]
    write_layout_tar(store, image, sink, files)


def write_docker_file(store: ContentStore, image: BuiltImage, dest: Path, *, names: Iterable[str] = ()) -> None:
    """write_docker_tar into `dest` via a temp file renamed into place."""
    with atomic_output(dest) as f:
        write_docker_tar(store, image, f, names=names)
