"""The docker tarball output (`-o type=docker,dest=FILE|-[,name=REF]`): what `docker load`,
`podman load` and `skopeo copy docker-archive:` read. Like BuildKit's docker exporter it is an OCI
image layout (the image named in index.json by `io.containerd.image.name` and the tag) plus the
`manifest.json` of `docker save` (config, RepoTags, layer paths), so old and new loaders accept it."""
from __future__ import annotations

import http.client
import json
import os
import socket
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterable

from builder.errors import PybuildError
from builder.export.assemble import BuiltImage
from builder.export.oci import OCI_LAYOUT, LayoutNotes, layout_index, write_layout_tar
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


def write_docker_tar(store: ContentStore, image: BuiltImage, sink: BinaryIO, *, names: Iterable[str] = (),
                     notes: LayoutNotes = LayoutNotes()) -> None:
    """Stream the docker tarball of `image` tagged `names` into `sink`."""
    names = list(names)
    annotations = [((CONTAINERD_NAME, str(Reference.parse(n))), (REF_NAME, Reference.parse(n).tag or "latest"))
                   for n in names]
    files = [("oci-layout", OCI_LAYOUT), ("index.json", layout_index(image, annotations, notes)),
             ("manifest.json", docker_manifest(image, names))]
    write_layout_tar(store, image, sink, files)


def write_docker_file(store: ContentStore, image: BuiltImage, dest: Path, *, names: Iterable[str] = (),
                      notes: LayoutNotes = LayoutNotes()) -> None:
    """write_docker_tar into `dest` via a temp file renamed into place."""
    with atomic_output(dest) as f:
        write_docker_tar(store, image, f, names=names, notes=notes)


DEFAULT_DOCKER_SOCKET = "/var/run/docker.sock"


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


def load_into_engine(store: ContentStore, image: BuiltImage, *, names: Iterable[str] = (),
                     socket_path: str = DEFAULT_DOCKER_SOCKET, timeout: float = 600.0) -> str:
    """`--load`: the docker tarball of `image` POSTed to a Docker engine's `/images/load` over the
    unix socket `socket_path`; returns what the engine said. PybuildError with a message saying
    what to do when there is no engine there or it refuses the image."""
    where = f"unix://{socket_path}"
    if not os.path.exists(socket_path):
        raise PybuildError(f"--load: no Docker engine at {where} (set DOCKER_HOST=unix://PATH, or write a file "
                           "with --output type=docker,dest=FILE and load it with `docker load -i FILE`)")
    with tempfile.TemporaryFile(dir=store.ingest_dir) as tar:
        write_docker_tar(store, image, tar, names=names)       # type: ignore[arg-type]
        size = tar.tell()
        tar.seek(0)
        conn = _UnixConnection(socket_path, timeout)
        try:
            conn.request("POST", "/images/load?quiet=1", body=tar,
                         headers={"Content-Type": "application/x-tar", "Content-Length": str(size)})
            resp = conn.getresponse()
            text = resp.read(1 << 20).decode(errors="replace")
        except OSError as e:
            raise PybuildError(f"--load: the Docker engine at {where} failed: {e}") from e
        finally:
            conn.close()
    messages = _engine_messages(text)
    if resp.status != 200 or any(m.startswith("error: ") for m in messages):
        detail = "; ".join(messages) or f"HTTP {resp.status}"
        raise PybuildError(f"--load: the Docker engine at {where} refused the image: {detail}")
    return "; ".join(messages)


def _engine_messages(text: str) -> list[str]:
    """The lines of a Docker engine answer: `stream` texts, `error: …` for errors."""
    out: list[str] = []
    for line in text.splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            if line.strip():
                out.append(line.strip()[:300])
            continue
        if not isinstance(doc, dict):
            continue
        err = doc.get("error") or (doc.get("errorDetail") or {}).get("message") or doc.get("message")
        if err:
            out.append(f"error: {str(err)[:300]}")
        elif doc.get("stream"):
            out.append(str(doc["stream"]).strip()[:300])
    return out
