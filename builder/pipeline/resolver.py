"""Resolve the images a Dockerfile names, for the frontend (BuildKit's ResolveImageConfig): from
pybuild's store (unless --pull), a registry, or an OCI layout directory. Every image resolved is
kept as a value — manifest digest → its chain of layers — that the solver's image runner is given
(`resolved()`); nothing reaches the solver any other way."""
from __future__ import annotations

import threading
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Callable, Mapping

from builder.errors import SourceError
from builder.image.digest import Digest
from builder.image.oci import Platform
from builder.image.reference import Reference
from builder.image.view import Chain, ResolvedImage
from builder.registry.pull import PulledImage, load_from_store, load_oci_layout, pull_image
from builder.store.content import ContentStore

if TYPE_CHECKING:     # requests loads only when a registry is used
    from builder.registry.client import RegistryClient


class SourceResolver:
    """The frontend's ImageResolver. Thread-safe."""

    def __init__(self, *, store: ContentStore, registry: Callable[[], RegistryClient], pull: bool) -> None:
        self._store = store
        self._registry = registry
        self._pull = pull
        self._chains: dict[Digest, Chain] = {}
        self._origins: dict[Digest, Reference] = {}
        self._lock = threading.Lock()

    def _keep(self, pulled: PulledImage) -> Digest:
        chain = pulled.chain()
        digest = pulled.manifest_descriptor.digest
        with self._lock:
            self._chains[digest] = chain
        return digest

    def resolve_image(self, ref: str, platform: Platform) -> ResolvedImage:
        try:
            r = Reference.parse(ref)
        except ValueError as e:
            raise SourceError(str(e)) from e
        pulled = None
        if not self._pull:
            desc = self._store.resolve_tag(str(r))
            if desc is not None and self._store.has(desc.digest):
                pulled = load_from_store(self._store, desc)
        if pulled is None:
            pulled = pull_image(self._registry(), self._store, r, platform)
        with self._lock:
            for d in (pulled.manifest.config, *pulled.manifest.layers):
                self._origins.setdefault(d.digest, r.with_repository(r.repository))
        return ResolvedImage(ref=str(r), digest=self._keep(pulled), config=pulled.config)

    def resolve_oci_layout(self, path: str, tag: str, platform: Platform) -> ResolvedImage:
        pulled = load_oci_layout(Path(path), tag, platform, self._store)
        return ResolvedImage(ref=f"oci-layout://{path}:{tag}", digest=self._keep(pulled), config=pulled.config)

    def origins(self) -> Mapping[Digest, Reference]:
        """Blob digest → the repository of a registry image it came from (for cross-repo mounts)."""
        with self._lock:
            return MappingProxyType(dict(self._origins))

    def resolved(self) -> Mapping[Digest, Chain]:
        """Every image resolved so far: manifest digest → chain (a read-only copy)."""
        with self._lock:
            return MappingProxyType(dict(self._chains))
