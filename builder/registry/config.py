"""The registry configuration file, the equivalent of buildkitd.toml's `[registry]` section, at
`$PYBUILD_CONFIG` or `~/.config/pybuild/config.toml` (the CLI finds it; library code is given
the path):

    [registry."docker.io"]
    mirrors = ["mirror.example.com"]     # pulls try these first, then the registry itself

    [registry."registry.local:5000"]
    http = true                          # plain HTTP
    insecure = true                      # HTTPS without certificate verification
    ca = ["/etc/pybuild/local-ca.pem"]   # CA certificates (a file) for this registry

`TLSPolicy` turns the file and a default CA bundle (`SSL_CERT_FILE` / `REQUESTS_CA_BUNDLE`) into
what `HttpClient` needs per host: the scheme and the `verify` value.
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from builder.errors import UsageError


@dataclass(frozen=True, slots=True, kw_only=True)
class HostConfig:
    http: bool = False
    insecure: bool = False
    ca: tuple[Path, ...] = ()
    mirrors: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class RegistryConfig:
    """Per-registry settings (keyed `host[:port]`, Docker Hub as `docker.io`) and the default CA
    bundle for HTTPS (None: requests' own)."""
    hosts: Mapping[str, HostConfig] = field(default_factory=dict)
    ca_bundle: Path | None = None

    def host(self, host: str) -> HostConfig:
        return self.hosts.get(host) or self.hosts.get(host.split(":", 1)[0] if host.count(":") == 1 else host) \
            or HostConfig()

    def plain_http_hosts(self) -> tuple[str, ...]:
        return tuple(h for h, c in self.hosts.items() if c.http)

    def verify(self, host: str) -> bool | str:
        """requests' `verify` for HTTPS to `host`: False (insecure), a CA file, or True."""
        c = self.host(host)
        if c.insecure:
            return False
        if c.ca:
            return str(c.ca[0])
        return str(self.ca_bundle) if self.ca_bundle is not None else True

    def mirrors(self, registry: str) -> tuple[str, ...]:
        return self.host(registry).mirrors


def load_registry_config(path: Path | None, *, ca_bundle: Path | None = None) -> RegistryConfig:
    """Read the file at `path` (absent or None: no per-registry settings); UsageError naming the
    file for anything malformed."""
    if path is None or not path.exists():
        return RegistryConfig(ca_bundle=ca_bundle)
    try:
        doc = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise UsageError(f"registry config {path}: {e}") from e
    section = doc.get("registry") or {}
    if not isinstance(section, dict):
        raise UsageError(f"registry config {path}: [registry] must be a table")
    hosts = {str(name): _host(path, str(name), table) for name, table in section.items()}
    return RegistryConfig(hosts=hosts, ca_bundle=ca_bundle)


def _host(path: Path, name: str, table: Any) -> HostConfig:
    where = f"registry config {path}: [registry.\"{name}\"]"
    if not isinstance(table, dict):
        raise UsageError(f"{where} must be a table")
    unknown = set(table) - {"http", "insecure", "ca", "mirrors"}
    if unknown:
        raise UsageError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    for key in ("http", "insecure"):
        if not isinstance(table.get(key, False), bool):
            raise UsageError(f"{where}: {key} must be true or false")
    lists = {}
    for key in ("ca", "mirrors"):
        value = table.get(key, [])
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise UsageError(f"{where}: {key} must be a list of strings")
        lists[key] = value
    if len(lists["ca"]) > 1:
        raise UsageError(f"{where}: give one CA file (concatenate several certificates into it)")
    ca = tuple((path.parent / p) if not Path(p).is_absolute() else Path(p) for p in lists["ca"])
    for p in ca:
        if not p.is_file():
            raise UsageError(f"{where}: CA file {p} does not exist")
    mirrors = tuple(m.split("://", 1)[-1].rstrip("/") for m in lists["mirrors"])
    return HostConfig(http=table.get("http", False), insecure=table.get("insecure", False), ca=ca, mirrors=mirrors)
