"""Image references: `[registry/]repository[:tag][@digest]` with Docker Hub defaults.

Parsing follows the distribution reference grammar (docker/distribution `reference` package):

- the first path component is a registry when it contains `.` or `:`, is `localhost`, or is a
  bracketed IPv6 address; otherwise the registry is `docker.io`;
- a one-component repository on Docker Hub gets the `library/` prefix;
- with neither tag nor digest the tag is `latest`; with only a digest the tag stays empty.

`index.docker.io` and `registry-1.docker.io` are normalised to `docker.io`; `api_host` gives the
host the distribution API really lives on.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace

from builder.image.digest import Digest

DEFAULT_REGISTRY = "docker.io"
DOCKER_HUB_API_HOST = "registry-1.docker.io"
DEFAULT_TAG = "latest"
_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})

_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_RE = re.compile(
    rf"^(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:.]+\])(?::[0-9]{{1,5}})?$")
_PATH_COMPONENT_RE = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_TAG_RE = re.compile(r"^[\w][\w.-]{0,127}$")
_MAX_NAME = 255


@dataclass(frozen=True, slots=True, kw_only=True)
class Reference:
    """A parsed, normalised image reference. Build one with `Reference.parse`."""

    registry: str
    repository: str
    tag: str = ""
    digest: Digest | None = None

    @classmethod
    def parse(cls, text: str) -> "Reference":
        """Parse `text`; raise ValueError with the reason when it is not a valid reference."""
        if not text or text != text.strip():
            raise ValueError(f"invalid reference {text!r}: empty or surrounded by whitespace")
        rest, digest = _split_digest(text)
        name, tag = _split_tag(text, rest)
        registry, repository = _split_name(text, name)
        if tag is None:
            tag = "" if digest is not None else DEFAULT_TAG
        return cls(registry=registry, repository=repository, tag=tag, digest=digest)

    @property
    def name(self) -> str:
        """`registry/repository`, e.g. `docker.io/library/busybox`."""
        return f"{self.registry}/{self.repository}"

    @property
    def api_host(self) -> str:
        """The host (and port) serving the distribution API for this registry."""
        return DOCKER_HUB_API_HOST if self.registry == DEFAULT_REGISTRY else self.registry

    @property
    def identifier(self) -> str:
        """What goes after `/manifests/` in a URL: the digest when pinned, else the tag."""
        return str(self.digest) if self.digest is not None else (self.tag or DEFAULT_TAG)

    def with_digest(self, digest: Digest) -> "Reference":
        """The same name and tag pinned to `digest`."""
        return replace(self, digest=digest)

    def with_tag(self, tag: str) -> "Reference":
        """The same name with `tag` and no digest."""
        if not _TAG_RE.match(tag):
            raise ValueError(f"invalid tag {tag!r}")
        return replace(self, tag=tag, digest=None)

    def with_repository(self, repository: str) -> "Reference":
        """Another repository on the same registry, no tag or digest (used for cross-repo mounts)."""
        return replace(self, repository=repository, tag="", digest=None)

    def __str__(self) -> str:
        s = self.name
        if self.tag:
            s += f":{self.tag}"
        if self.digest is not None:
            s += f"@{self.digest}"
        return s


def _split_digest(text: str) -> tuple[str, Digest | None]:
    rest, sep, dg = text.partition("@")
    if not sep:
        return text, None
    try:
        return rest, Digest.parse(dg)
    except ValueError:
        raise ValueError(f"invalid reference {text!r}: bad digest {dg!r} (want sha256:<64 hex>)") from None


def _split_tag(text: str, rest: str) -> tuple[str, str | None]:
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon <= slash:           # the colon (if any) belongs to a registry port
        return rest, None
    name, tag = rest[:colon], rest[colon + 1:]
    if not _TAG_RE.match(tag):
        raise ValueError(f"invalid reference {text!r}: bad tag {tag!r} "
                         "(letters, digits, '_', '.', '-'; at most 128; not starting with '.' or '-')")
    return name, tag


def _split_name(text: str, name: str) -> tuple[str, str]:
    if not name:
        raise ValueError(f"invalid reference {text!r}: missing repository name")
    first, sep, remainder = name.partition("/")
    if sep and _looks_like_registry(first):
        registry, path = first, remainder
        if not _DOMAIN_RE.match(registry):
            raise ValueError(f"invalid reference {text!r}: bad registry {registry!r}")
    else:
        registry, path = DEFAULT_REGISTRY, name
    if registry in _HUB_ALIASES:
        registry = DEFAULT_REGISTRY
    if registry == DEFAULT_REGISTRY and "/" not in path:
        path = f"library/{path}"
    for comp in path.split("/"):
        if not _PATH_COMPONENT_RE.match(comp):
            why = "must be lowercase" if comp.lower() != comp else "bad path component"
            raise ValueError(f"invalid reference {text!r}: repository {why}: {comp!r}")
    if len(registry) + 1 + len(path) > _MAX_NAME:
        raise ValueError(f"invalid reference {text!r}: name longer than {_MAX_NAME} characters")
    return registry, path


def _looks_like_registry(component: str) -> bool:
    return ("." in component or ":" in component or component == "localhost"
            or component.startswith("[") or component.lower() != component)
