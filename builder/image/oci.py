"""OCI / Docker image data types. The only module that turns image JSON into objects and back.

Rendering is canonical (sorted keys, compact separators) so that equal values give equal digests.
"""
from __future__ import annotations

import enum
import json
import platform as _platform
from dataclasses import dataclass, field, replace
from typing import Any

from builder.image.digest import Digest


class Compression(str, enum.Enum):
    """How a layer blob is compressed: the one definition (outputs, the sandbox, codecs)."""
    GZIP = "gzip"
    ZSTD = "zstd"
    UNCOMPRESSED = "uncompressed"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, text: str) -> "Compression":
        """The compression named `text`; ValueError names the accepted values."""
        try:
            return cls(text)
        except ValueError:
            raise ValueError(f"unknown compression {text!r}: use gzip, zstd or uncompressed") from None


class MediaType:
    OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
    OCI_INDEX = "application/vnd.oci.image.index.v1+json"
    OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
    OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
    OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
    OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
    DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
    DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
    DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
    DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
    DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
    DOCKER_FOREIGN_GZIP = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"

    MANIFESTS = (OCI_MANIFEST, DOCKER_MANIFEST)
    INDEXES = (OCI_INDEX, DOCKER_LIST)

    @staticmethod
    def compression(media_type: str) -> Compression:
        """The compression of a layer media type."""
        if media_type.endswith("gzip"):
            return Compression.GZIP
        if media_type.endswith("zstd"):
            return Compression.ZSTD
        return Compression.UNCOMPRESSED

    @staticmethod
    def oci_layer(compression: Compression) -> str:
        return {Compression.GZIP: MediaType.OCI_LAYER_GZIP, Compression.ZSTD: MediaType.OCI_LAYER_ZSTD,
                Compression.UNCOMPRESSED: MediaType.OCI_LAYER}[Compression(compression)]


REF_NAME = "org.opencontainers.image.ref.name"     # the tag annotation in an OCI layout's index.json
MAX_MANIFEST_SIZE = 4 << 20     # cap on manifests and indexes read from a registry or a layout


def canonical_json(obj: Any) -> bytes:
    """Sorted keys, compact separators, UTF-8; strings that carry undecodable bytes of a
    Dockerfile (surrogate escapes) render as those bytes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "surrogateescape")


_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386", "ppc64le": "ppc64le",
         "s390x": "s390x", "riscv64": "riscv64"}


@dataclass(frozen=True, slots=True, kw_only=True)
class Platform:
    os: str = "linux"
    architecture: str = "amd64"
    variant: str = ""

    @classmethod
    def host(cls) -> "Platform":
        m = _platform.machine()
        arch = _ARCH.get(m, m)
        return cls(os="linux", architecture=arch, variant="v7" if arch == "arm" else ("v8" if arch == "arm64" else ""))

    @classmethod
    def parse(cls, text: str) -> "Platform":
        parts = text.split("/")
        if len(parts) < 2 or len(parts) > 3 or not all(parts):
            raise ValueError(f"invalid platform {text!r} (want os/arch[/variant])")
        return cls(os=parts[0], architecture=parts[1], variant=parts[2] if len(parts) == 3 else "")

    def __str__(self) -> str:
        s = f"{self.os}/{self.architecture}"
        return f"{s}/{self.variant}" if self.variant else s

    def matches(self, other: "Platform") -> bool:
        """True if `other` (from an index) can serve this platform; variant is optional there."""
        if self.os != other.os or self.architecture != other.architecture:
            return False
        return not other.variant or not self.variant or other.variant == self.variant

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            d["variant"] = self.variant
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Platform":
        return cls(os=d.get("os", ""), architecture=d.get("architecture", ""), variant=d.get("variant", "") or "")


@dataclass(frozen=True, slots=True, kw_only=True)
class Descriptor:
    media_type: str
    digest: Digest
    size: int
    annotations: tuple[tuple[str, str], ...] = ()
    platform: Platform | None = None

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"mediaType": self.media_type, "digest": str(self.digest), "size": self.size}
        if self.annotations:
            d["annotations"] = dict(self.annotations)
        if self.platform is not None:
            d["platform"] = self.platform.to_json()
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Descriptor":
        plat = d.get("platform")
        return cls(media_type=d.get("mediaType", ""), digest=Digest.parse(d["digest"]), size=int(d["size"]),
                   annotations=tuple(sorted((d.get("annotations") or {}).items())),
                   platform=Platform.from_json(plat) if plat else None)


@dataclass(frozen=True, slots=True, kw_only=True)
class Manifest:
    config: Descriptor
    layers: tuple[Descriptor, ...]
    media_type: str = MediaType.OCI_MANIFEST
    annotations: tuple[tuple[str, str], ...] = ()

    def to_bytes(self) -> bytes:
        d: dict[str, Any] = {"schemaVersion": 2, "mediaType": self.media_type, "config": self.config.to_json(),
                             "layers": [l.to_json() for l in self.layers]}
        if self.annotations:
            d["annotations"] = dict(self.annotations)
        return canonical_json(d)

    @classmethod
    def from_bytes(cls, raw: bytes) -> "Manifest":
        d = json.loads(raw)
        return cls(config=Descriptor.from_json(d["config"]),
                   layers=tuple(Descriptor.from_json(x) for x in d.get("layers") or []),
                   media_type=d.get("mediaType") or MediaType.OCI_MANIFEST,
                   annotations=tuple(sorted((d.get("annotations") or {}).items())))


@dataclass(frozen=True, slots=True, kw_only=True)
class Index:
    manifests: tuple[Descriptor, ...]
    media_type: str = MediaType.OCI_INDEX
    annotations: tuple[tuple[str, str], ...] = ()

    def to_bytes(self) -> bytes:
        d: dict[str, Any] = {"schemaVersion": 2, "mediaType": self.media_type,
                             "manifests": [m.to_json() for m in self.manifests]}
        if self.annotations:
            d["annotations"] = dict(self.annotations)
        return canonical_json(d)

    @classmethod
    def from_bytes(cls, raw: bytes) -> "Index":
        d = json.loads(raw)
        return cls(manifests=tuple(Descriptor.from_json(x) for x in d.get("manifests") or []),
                   media_type=d.get("mediaType") or MediaType.OCI_INDEX,
                   annotations=tuple(sorted((d.get("annotations") or {}).items())))


@dataclass(frozen=True, slots=True, kw_only=True)
class Healthcheck:
    test: tuple[str, ...] = ()
    interval: int = 0        # nanoseconds
    timeout: int = 0
    start_period: int = 0
    start_interval: int = 0
    retries: int = 0

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"Test": list(self.test)}
        for k, v in (("Interval", self.interval), ("Timeout", self.timeout), ("StartPeriod", self.start_period),
                     ("StartInterval", self.start_interval), ("Retries", self.retries)):
            if v:
                d[k] = v
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Healthcheck":
        return cls(test=tuple(d.get("Test") or ()), interval=int(d.get("Interval") or 0),
                   timeout=int(d.get("Timeout") or 0), start_period=int(d.get("StartPeriod") or 0),
                   start_interval=int(d.get("StartInterval") or 0), retries=int(d.get("Retries") or 0))


@dataclass(frozen=True, slots=True, kw_only=True)
class ContainerConfig:
    """The `config` object of an image config (runtime defaults). Tuples keep order; dict-like
    fields are sorted tuples of pairs so the dataclass stays hashable."""
    user: str = ""
    env: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] | None = None
    cmd: tuple[str, ...] | None = None
    working_dir: str = ""
    exposed_ports: tuple[str, ...] = ()
    volumes: tuple[str, ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    stop_signal: str = ""
    healthcheck: Healthcheck | None = None
    shell: tuple[str, ...] = ()
    onbuild: tuple[str, ...] = ()
    args_escaped: bool = False

    def env_dict(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for e in self.env:
            k, _, v = e.partition("=")
            out[k] = v
        return out

    def with_env(self, key: str, value: str) -> "ContainerConfig":
        """Set or replace an Env entry, keeping the position of an existing key (Docker does)."""
        env = list(self.env)
        for i, e in enumerate(env):
            if e.partition("=")[0] == key:
                env[i] = f"{key}={value}"
                break
        else:
            env.append(f"{key}={value}")
        return replace(self, env=tuple(env))

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        if self.user:
            d["User"] = self.user
        if self.env:
            d["Env"] = list(self.env)
        if self.entrypoint is not None:
            d["Entrypoint"] = list(self.entrypoint)
        if self.cmd is not None:
            d["Cmd"] = list(self.cmd)
        if self.working_dir:
            d["WorkingDir"] = self.working_dir
        if self.exposed_ports:
            d["ExposedPorts"] = {p: {} for p in self.exposed_ports}
        if self.volumes:
            d["Volumes"] = {v: {} for v in self.volumes}
        if self.labels:
            d["Labels"] = dict(self.labels)
        if self.stop_signal:
            d["StopSignal"] = self.stop_signal
        if self.healthcheck is not None:
            d["Healthcheck"] = self.healthcheck.to_json()
        if self.shell:
            d["Shell"] = list(self.shell)
        if self.onbuild:
            d["OnBuild"] = list(self.onbuild)
        if self.args_escaped:
            d["ArgsEscaped"] = True
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any] | None) -> "ContainerConfig":
        d = d or {}
        hc = d.get("Healthcheck")
        return cls(user=d.get("User") or "", env=tuple(d.get("Env") or ()),
                   entrypoint=tuple(d["Entrypoint"]) if d.get("Entrypoint") is not None else None,
                   cmd=tuple(d["Cmd"]) if d.get("Cmd") is not None else None,
                   working_dir=d.get("WorkingDir") or "",
                   exposed_ports=tuple(sorted(d.get("ExposedPorts") or {})),
                   volumes=tuple(sorted(d.get("Volumes") or {})),
                   labels=tuple(sorted((d.get("Labels") or {}).items())),
                   stop_signal=d.get("StopSignal") or "",
                   healthcheck=Healthcheck.from_json(hc) if hc else None,
                   shell=tuple(d.get("Shell") or ()), onbuild=tuple(d.get("OnBuild") or ()),
                   args_escaped=bool(d.get("ArgsEscaped")))


@dataclass(frozen=True, slots=True, kw_only=True)
class History:
    created: str = ""          # RFC 3339
    created_by: str = ""
    comment: str = ""
    empty_layer: bool = False

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {}
        if self.created:
            d["created"] = self.created
        if self.created_by:
            d["created_by"] = self.created_by
        if self.comment:
            d["comment"] = self.comment
        if self.empty_layer:
            d["empty_layer"] = True
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "History":
        return cls(created=d.get("created") or "", created_by=d.get("created_by") or "",
                   comment=d.get("comment") or "", empty_layer=bool(d.get("empty_layer")))


@dataclass(frozen=True, slots=True, kw_only=True)
class ImageConfig:
    platform: Platform = field(default_factory=Platform)
    config: ContainerConfig = field(default_factory=ContainerConfig)
    diff_ids: tuple[Digest, ...] = ()
    history: tuple[History, ...] = ()
    created: str = ""
    author: str = ""

    def to_bytes(self) -> bytes:
        d: dict[str, Any] = {"architecture": self.platform.architecture, "os": self.platform.os,
                             "config": self.config.to_json(),
                             "rootfs": {"type": "layers", "diff_ids": [str(x) for x in self.diff_ids]}}
        if self.platform.variant:
            d["variant"] = self.platform.variant
        if self.history:
            d["history"] = [h.to_json() for h in self.history]
        if self.created:
            d["created"] = self.created
        if self.author:
            d["author"] = self.author
        return canonical_json(d)

    @classmethod
    def from_bytes(cls, raw: bytes) -> "ImageConfig":
        d = json.loads(raw)
        return cls(platform=Platform(os=d.get("os") or "linux", architecture=d.get("architecture") or "",
                                     variant=d.get("variant") or ""),
                   config=ContainerConfig.from_json(d.get("config")),
                   diff_ids=tuple(Digest.parse(x) for x in (d.get("rootfs") or {}).get("diff_ids") or []),
                   history=tuple(History.from_json(h) for h in d.get("history") or []),
                   created=d.get("created") or "", author=d.get("author") or "")


def pick_platform(index: Index, platform: Platform) -> Descriptor | None:
    """The index entry serving `platform`: an exact variant match first, else the first match."""
    matches = [m for m in index.manifests if m.platform is not None and platform.matches(m.platform)]
    exact = [m for m in matches if m.platform is not None and m.platform.variant == platform.variant]
    best = exact or matches
    return best[0] if best else None
