"""The place one build works in: the store, the cache index and a private temp dir under the
pybuild root, and (created on first use) the registry client. Closing it removes the temp dir
and closes what it opened."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from builder.image.digest import Digest
from builder.registry.config import RegistryConfig
from builder.request import BuildRequest
from builder.solve.cache import CacheIndex
from builder.store.content import ContentStore, remove_stale
from builder.store.root import prepare_root

if TYPE_CHECKING:     # requests loads only when a registry is used
    from builder.registry.client import RegistryClient
    from builder.registry.http import HttpClient


def default_root() -> Path:
    return Path.home() / ".local" / "share" / "pybuild"


class BuildEnv:
    """`with BuildEnv(request) as env:` — store, cache, tmp and registry for one build."""

    def __init__(self, req: BuildRequest, *, registry_config: RegistryConfig | None = None) -> None:
        self.req = req
        self.registry_config = registry_config or RegistryConfig(ca_bundle=req.ca_bundle)
        self.root = prepare_root(Path(req.root) if req.root is not None else default_root())
        self.store = ContentStore(self.root)
        self.cache = CacheIndex(self.root)
        (self.root / "tmp").mkdir(exist_ok=True)
        remove_stale(self.root / "tmp", "build-")              # left by builds that were killed
        remove_stale(self.store.ingest_dir, "ingest-")
        self.tmp = Path(tempfile.mkdtemp(dir=self.root / "tmp", prefix=f"build-{os.getpid()}-"))
        self.stack = contextlib.ExitStack()
        self._client: RegistryClient | None = None
        self._http: HttpClient | None = None

    def __enter__(self) -> "BuildEnv":
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.stack.close()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def http(self) -> HttpClient:
        """The hardened HTTP client for ADD <url> (caps, retries, redirect rules)."""
        if self._http is None:
            import requests
            from builder.registry.http import HttpClient
            session = requests.Session()
            self.stack.callback(session.close)
            self._http = HttpClient(session, insecure_hosts=tuple(self.req.insecure_registries))
        return self._http

    def download(self, url: str, sink: BinaryIO) -> tuple[Digest, int]:
        """ADD <url> through `http()` (created, and requests imported, only when first used)."""
        return self.http().download(url, sink)

    def registry(self) -> RegistryClient:
        """The registry client of this build (one HTTP session, credentials from docker config)."""
        if self._client is None:
            from builder.registry.connect import registry_client
            self._client = registry_client(self.registry_config, insecure=self.req.insecure_registries,
                                           docker_config=self.req.docker_config)
            self.stack.callback(self._client.close)
        return self._client
