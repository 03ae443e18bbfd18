"""What a build is asked for and what it gives back: the library's request and result types.

Frozen values, checked by `validate()` before anything is created on disk or started."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal, Mapping

from builder.image.digest import Digest
from builder.image.oci import Compression, Descriptor
from builder.progress import ProgressSink, null_sink


@dataclass(frozen=True, slots=True, kw_only=True)
class OutputSpec:
    """One --output. type: oci (image-layout tar), tar (root filesystem tar), local (directory),
    image (pybuild's local store). dest "-" means the injected stdout stream."""
    type: Literal["oci", "tar", "local", "image"]
    dest: str = ""
    compression: Compression = Compression.GZIP
    names: tuple[str, ...] = ()          # type=image,name=a,b: tags besides -t


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


@dataclass(frozen=True, slots=True, kw_only=True)
class BuildResult:
    digest: Digest                    # manifest digest
    config_digest: Digest
    descriptor: Descriptor
    metadata: Mapping[str, str] = field(default_factory=dict)
