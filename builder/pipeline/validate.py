"""Check a BuildRequest before anything is created on disk or started: the context, the
Dockerfile, the platform, tags, outputs and named contexts. Everything wrong with the request is
a UsageError naming the flag; the result is a `BuildPlan` of parsed values."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Mapping

from builder.errors import UsageError
from builder.image.oci import Platform
from builder.image.reference import Reference
from builder.registry.config import RegistryConfig, load_registry_config
from builder.request import BuildRequest


@dataclass(frozen=True, slots=True, kw_only=True)
class NamedSource:
    """A --build-context value: kind "local" (a directory), "oci-layout" (DIR and TAG) or "image"."""
    kind: Literal["local", "oci-layout", "image"]
    value: str
    tag: str = ""


@dataclass(frozen=True, kw_only=True)
class BuildPlan:
    context: Path
    dockerfile: Path
    dockerfile_data: bytes
    platform: Platform
    build_platform: Platform
    named: Mapping[str, NamedSource]
    dirs: Mapping[str, Path]            # every local directory input by name ("context" included)
    registry: RegistryConfig            # the registry configuration file, read and checked


def check_request(req: BuildRequest) -> BuildPlan:
    """The parsed request; UsageError for anything wrong with it."""
    context = Path(req.context)
    if not context.is_dir():
        raise UsageError(f"build context {context} is not a directory")
    dockerfile = Path(req.dockerfile) if req.dockerfile else context / "Dockerfile"
    try:
        data = dockerfile.read_bytes()
    except OSError as e:
        raise UsageError(f"cannot read Dockerfile {dockerfile}: {e.strerror}") from e
    host = Platform.host()
    platform = _platform(req.platform, host)
    _check_tags(req)
    _check_outputs(req)
    named = {name: _named(name, value) for name, value in req.build_contexts.items()}
    dirs = {name: Path(n.value) for name, n in named.items() if n.kind == "local"}
    dirs["context"] = context
    if req.ca_bundle is not None and not Path(req.ca_bundle).is_file():
        raise UsageError(f"CA bundle {req.ca_bundle} (SSL_CERT_FILE / REQUESTS_CA_BUNDLE) does not exist")
    registry = load_registry_config(req.registry_config, ca_bundle=req.ca_bundle)
    return BuildPlan(context=context, dockerfile=dockerfile, dockerfile_data=data, platform=platform,
                     build_platform=host, named=named, dirs=dirs, registry=registry)


def _platform(text: str | None, host: Platform) -> Platform:
    if not text:
        return host
    try:
        platform = Platform.parse(text)
    except ValueError as e:
        raise UsageError(f"--platform {text}: {e}") from e
    if (platform.os, platform.architecture) != (host.os, host.architecture):
        raise UsageError(f"--platform {text}: only the host platform ({host}) can be built")
    return platform


def _check_tags(req: BuildRequest) -> None:
    for t in (*req.tags, *(n for o in req.outputs for n in o.names)):
        try:
            Reference.parse(t)
        except ValueError as e:
            raise UsageError(f"-t {t}: {e}") from e


def _check_outputs(req: BuildRequest) -> None:
    for out in req.outputs:
        if out.type not in ("oci", "tar", "local", "image", "registry", "docker"):
            raise UsageError(f"--output type={out.type}: unsupported output type")
        if out.type in ("oci", "tar", "local") and not out.dest:
            raise UsageError(f"--output type={out.type} needs dest=")
        if out.pushes and not (req.tags or out.names):
            raise UsageError(f"--output type={out.type}: pushing needs an image name (-t NAME or name=NAME)")
        if out.type == "oci" and not out.tar and out.dest == "-":
            raise UsageError("--output type=oci,tar=false needs a directory as dest=")
        if out.dest == "-" and req.stdout is None:
            raise UsageError(f"--output type={out.type},dest=-: output to '-' needs a stdout stream")


def _named(name: str, value: str) -> NamedSource:
    if value.startswith("oci-layout://"):
        rest = value[len("oci-layout://"):]
        path, tag = rest, ""
        head, sep, tail = rest.rpartition(":")
        if sep and "/" not in tail:
            path, tag = head, tail
        return NamedSource(kind="oci-layout", value=path, tag=tag)
    if value.startswith("docker-image://"):
        return NamedSource(kind="image", value=value[len("docker-image://"):])
    if "://" in value:
        raise UsageError(f"--build-context {name}={value}: unsupported source (use a directory, "
                         "oci-layout://DIR[:TAG] or docker-image://REF)")
    if not Path(value).is_dir():
        raise UsageError(f"--build-context {name}={value}: not a directory")
    return NamedSource(kind="local", value=value)
