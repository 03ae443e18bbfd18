"""What a build is asked for and what it gives back: the library's request and result types.

Frozen values, checked by `validate()` before anything is created on disk or started."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal, Mapping

from builder.image.digest import Digest
from builder.image.oci import Compression, Descriptor
from builder.progress import ProgressSink, null_sink


AnnotationLevel = Literal["manifest", "index", "manifest-descriptor", "index-descriptor"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Annotation:
    """One --annotation: `[LEVEL:]KEY=VALUE` as buildx (level `manifest` by default)."""
    key: str
    value: str
    level: AnnotationLevel = "manifest"


@dataclass(frozen=True, slots=True, kw_only=True)
class OutputSpec:
    """One --output. type: oci (image-layout tar, or directory with `tar=False`), docker (a tarball
    `docker load` accepts), tar (root filesystem tar), local (directory), image (pybuild's local
    store; pushed too with `push=True`), registry (pushed only). dest "-" means the injected stdout
    stream; type=docker without dest loads the image into the Docker engine (`--load`). `names` are image names besides -t (image, registry: tagged/pushed; docker: RepoTags)."""
    type: Literal["oci", "tar", "local", "image", "registry", "docker"]
    dest: str = ""
    compression: Compression = Compression.GZIP
    names: tuple[str, ...] = ()
    push: bool = False                   # type=image,push=true (type=registry always pushes)
    tar: bool = True                     # type=oci,tar=false: an OCI layout directory at dest
    oci_mediatypes: bool | None = None   # None: OCI media types, but docker's for type=docker (as BuildKit)
    force_compression: bool = False      # base-image layers recompressed too (else sent as pulled)

    @property
    def pushes(self) -> bool:
        return self.type == "registry" or (self.type == "image" and self.push)


@dataclass(frozen=True, kw_only=True)
class BuildRequest:
    context: Path
    dockerfile: Path | None = None                      # default: <context>/Dockerfile
    tags: tuple[str, ...] = ()
    build_args: Mapping[str, str] = field(default_factory=dict)
    target: str | None = None
    no_cache: bool = False
    pull: bool = False
    outputs: tuple[OutputSpec, ...] = ()                # empty: the local store
    build_contexts: Mapping[str, str] = field(default_factory=dict)   # NAME -> DIR | oci-layout://DIR[:TAG] | docker-image://REF
    secrets: Mapping[str, bytes] = field(default_factory=dict)
    insecure_registries: tuple[str, ...] = ()
    root: Path | None = None                            # default: ~/.local/share/pybuild (resolved per build)
    platform: str | None = None
    progress: ProgressSink = null_sink
    docker_config: Path | None = None
    snapshotter: Literal["auto", "overlay", "native"] = "auto"
    stdout: BinaryIO | None = None
    source_date_epoch: int | None = None
    allow: tuple[str, ...] = ()                          # entitlements, as buildx --allow: network.host
    labels: Mapping[str, str] = field(default_factory=dict)  # --label: added to the image config
    docker_socket: str = "/var/run/docker.sock"         # type=docker without dest (--load) loads here
    annotations: tuple[Annotation, ...] = ()             # --annotation
    registry_config: Path | None = None                  # buildkitd.toml-like [registry] file (mirrors, http, CA)
    ca_bundle: Path | None = None                        # CA bundle for HTTPS registries (SSL_CERT_FILE)
    step_memory: int | None = None                       # bytes a RUN step may use (delegated cgroup v2)
    step_pids: int | None = None                         # processes a RUN step may have at once
    step_log_limit: int | None = None                    # bytes of a step's output passed on (full log kept)
    max_layer_expansion: int | None = 1 << 30            # decompression-bomb cap of layers and ADD archives
    max_expansion_ratio: int = 100                       # ... and its ratio to the compressed size
    relaxed: tuple[str, ...] = ()                        # step protections waived (--sandbox-relax)


@dataclass(frozen=True, slots=True, kw_only=True)
class BuildResult:
    digest: Digest                    # manifest digest
    config_digest: Digest
    descriptor: Descriptor
    metadata: Mapping[str, object] = field(default_factory=dict)   # BuildKit's --metadata-file keys
