"""`pybuild login` / `pybuild logout`: credentials checked against the registry (`GET /v2/`, as
`docker login` does) before they are saved in the docker config file."""
from __future__ import annotations

from pathlib import Path

from typing import TYPE_CHECKING, Collection

from builder.image.reference import Reference
from builder.registry.config import RegistryConfig
from builder.registry.credentials import CredentialProvider, Credentials, DockerConfigWriter, StaticCredentials

if TYPE_CHECKING:     # requests loads only when a registry is used
    from builder.registry.client import RegistryClient


def registry_client(config: RegistryConfig, *, insecure: Collection[str] = (), docker_config: Path | None = None,
                    credentials: CredentialProvider | None = None) -> RegistryClient:
    """A RegistryClient over a new session (closed by `client.close()`) that follows `config`:
    plain HTTP, certificate checks and CA per host (token realms too), mirrors for pulls.
    Credentials: `credentials`, else the docker config file `docker_config`."""
    import requests
    from builder.registry.auth import Authenticator
    from builder.registry.client import RegistryClient
    from builder.registry.http import HttpClient
    session = requests.Session()
    plain = (*insecure, *config.plain_http_hosts())
    token_http = HttpClient(session, insecure_hosts=plain, verify=config.verify, timeout=30.0)
    auth = Authenticator(session, credentials, config_path=docker_config, http=token_http)
    return RegistryClient(session, auth=auth, insecure_hosts=plain, verify=config.verify, mirrors=config.mirrors)


def normalize_registry(registry: str) -> str:
    """`registry` as references name it: `docker.io` for the Docker Hub aliases and URLs."""
    host = registry.split("://", 1)[-1].split("/", 1)[0]
    return Reference.parse(f"{host}/x/y").registry if host else registry


def login(config_path: Path, registry: str, username: str, password: str, *, insecure: bool = False,
          registry_config: RegistryConfig = RegistryConfig()) -> None:
    """Check the credentials against `registry`; save them on success. AuthError when refused."""
    reg = normalize_registry(registry)
    creds = Credentials(username=username, password=password)
    client = registry_client(registry_config, insecure=(reg,) if insecure else (),
                             credentials=StaticCredentials({reg: creds}))
    try:
        client.ping(reg)
    finally:
        client.close()
    DockerConfigWriter(config_path).login(reg, creds)


def logout(config_path: Path, registry: str) -> bool:
    """Forget `registry`'s credentials; False when none were saved."""
    return DockerConfigWriter(config_path).logout(normalize_registry(registry))
