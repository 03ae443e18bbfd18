"""`pybuild login` / `pybuild logout`: credentials checked against the registry (`GET /v2/`, as
`docker login` does) before they are saved in the docker config file."""
from __future__ import annotations

from pathlib import Path

from builder.image.reference import Reference
from builder.registry.config import RegistryConfig
from builder.registry.connect import registry_client
from builder.registry.credentials import Credentials, DockerConfigWriter, StaticCredentials


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
