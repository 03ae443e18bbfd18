"""The registry client a build (or `pybuild login`) uses, set up from the registry configuration:
one session, one hardened HTTP client per use, auth over the same TLS rules."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Collection

from builder.registry.config import RegistryConfig
from builder.registry.credentials import CredentialProvider

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
