"""Registry credentials: docker `config.json` (`auths`, `credHelpers`, `credsStore`), credential
helpers run without a shell, and a static table.

Library code never reads the environment: `docker_config_path(env)` takes the mapping the CLI
passes in.
"""
from __future__ import annotations

import base64
import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Protocol

from builder.errors import AuthError

_HUB_KEYS = ("https://index.docker.io/v1/", "index.docker.io", "docker.io", "registry-1.docker.io")
_HUB_SERVER = "https://index.docker.io/v1/"


@dataclass(frozen=True, slots=True, kw_only=True)
class Credentials:
    """Username/password, or an identity (refresh) token when `identity_token` is set."""
    username: str = ""
    password: str = ""
    identity_token: str = ""

    def __repr__(self) -> str:           # never leak secrets into logs or tracebacks
        return f"Credentials(username={self.username!r}, password=***)"


class CredentialProvider(Protocol):
    def get(self, registry: str) -> Credentials | None:
        """Credentials for `registry` (a Reference.registry, e.g. `docker.io`, `host:5000`), or None."""
        ...


Runner = Callable[..., "subprocess.CompletedProcess[bytes]"]


def docker_config_path(env: Mapping[str, str]) -> Path | None:
    """`$DOCKER_CONFIG/config.json`, else `$HOME/.docker/config.json`; None without either."""
    if env.get("DOCKER_CONFIG"):
        return Path(env["DOCKER_CONFIG"]) / "config.json"
    if env.get("HOME"):
        return Path(env["HOME"]) / ".docker" / "config.json"
    return None


class DockerConfigCredentials:
    """Credentials from a docker `config.json`. The file is read on each `get` (it is small and
    may change while a long build runs); a missing file means no credentials. Credential helpers
    run as `docker-credential-<name> get` without a shell, the server URL on stdin."""

    def __init__(self, config_path: Path | None, *, runner: Runner = subprocess.run,
                 helper_timeout: float = 30.0) -> None:
        self._path = config_path
        self._run = runner
        self._timeout = helper_timeout

    def get(self, registry: str) -> Credentials | None:
        cfg = self._load()
        helper = (cfg.get("credHelpers") or {}).get(registry)
        if helper is None and registry == "docker.io":
            helpers = cfg.get("credHelpers") or {}
            helper = next((helpers[k] for k in _HUB_KEYS if k in helpers), None)
        if helper:
            return self._from_helper(helper, registry)
        entry = _find_auth_entry(cfg.get("auths") or {}, registry)
        if entry is not None:
            creds = _decode_auth_entry(entry, registry)
            if creds is not None:
                return creds
        if cfg.get("credsStore"):
            return self._from_helper(cfg["credsStore"], registry)
        return None

    def _load(self) -> dict:
        if self._path is None:
            return {}
        try:
            data = json.loads(self._path.read_bytes())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            raise AuthError(f"cannot read docker config {self._path}: {e}") from e
        if not isinstance(data, dict):
            raise AuthError(f"docker config {self._path}: not a JSON object")
        return data

    def _from_helper(self, helper: str, registry: str) -> Credentials | None:
        if not re.fullmatch(r"[A-Za-z0-9._-]+", helper):
            raise AuthError(f"invalid credential helper name {helper!r}")
        server = _HUB_SERVER if registry == "docker.io" else registry
        try:
            proc = self._run([f"docker-credential-{helper}", "get"], input=server.encode(),
                             capture_output=True, timeout=self._timeout, check=False)
        except (OSError, subprocess.SubprocessError) as e:
            raise AuthError(f"credential helper docker-credential-{helper} failed: {e}") from e
        if proc.returncode != 0:
            msg = (proc.stdout or b"").decode(errors="replace").strip() + (proc.stderr or b"").decode(errors="replace")
            if "credentials not found" in msg.lower():
                return None
            raise AuthError(f"credential helper docker-credential-{helper} for {registry}: "
                            f"exit {proc.returncode}: {msg.strip()[:200]}")
        try:
            out = json.loads(proc.stdout)
            user, secret = str(out.get("Username") or ""), str(out.get("Secret") or "")
        except (ValueError, AttributeError) as e:
            raise AuthError(f"credential helper docker-credential-{helper}: bad output") from e
        if user == "<token>":
            return Credentials(identity_token=secret)
        return Credentials(username=user, password=secret)


def _normalize_key(key: str) -> str:
    k = key.split("://", 1)[-1]
    return k.split("/", 1)[0]


def _find_auth_entry(auths: Mapping[str, object], registry: str) -> Mapping[str, object] | None:
    wanted = {_normalize_key(k) for k in _HUB_KEYS} if registry == "docker.io" else {registry}
    for key in sorted(auths):           # exact key order-independent; first normalised match wins
        if _normalize_key(key) in wanted and isinstance(auths[key], Mapping):
            return auths[key]           # type: ignore[return-value]
    return None


def _decode_auth_entry(entry: Mapping[str, object], registry: str) -> Credentials | None:
    token = str(entry.get("identitytoken") or "")
    if entry.get("auth"):
        try:
            raw = base64.b64decode(str(entry["auth"]), validate=True).decode()
        except (ValueError, UnicodeDecodeError) as e:
            raise AuthError(f"docker config: bad base64 'auth' for {registry}") from e
        user, sep, pw = raw.partition(":")
        if not sep:
            raise AuthError(f"docker config: 'auth' for {registry} is not user:password")
        return Credentials(username=user, password=pw, identity_token=token)
    if entry.get("username") or entry.get("password"):
        return Credentials(username=str(entry.get("username") or ""), password=str(entry.get("password") or ""),
                           identity_token=token)
    if token:
        return Credentials(identity_token=token)
    return None


class StaticCredentials:
    """A fixed registry → Credentials table (tests, `--registry-auth`-style flags)."""

    def __init__(self, table: Mapping[str, Credentials]) -> None:
        self._table = dict(table)

    def get(self, registry: str) -> Credentials | None:
        return self._table.get(registry)


# --------------------------------------------------------------------------- login / logout
def server_key(registry: str) -> str:
    """The `auths` key (and credential-helper server URL) docker uses for `registry`."""
    return _HUB_SERVER if registry in _HUB_KEYS else registry


class DockerConfigWriter:
    """`pybuild login` / `pybuild logout` on a docker `config.json`, as `docker login` does: the
    registry's `credHelpers` entry, else the `credsStore`, receives the secret (`docker-credential-
    <name> store|erase`) and `auths` keeps an empty entry; without a helper the secret goes into
    `auths` as base64 `user:password`. Other keys of the file are kept; it is written 0600,
    atomically."""

    def __init__(self, config_path: Path, *, runner: Runner = subprocess.run, helper_timeout: float = 30.0) -> None:
        self._path = config_path
        self._run = runner
        self._timeout = helper_timeout

    def login(self, registry: str, creds: Credentials) -> None:
        cfg = DockerConfigCredentials(self._path)._load()
        key = server_key(registry)
        helper = _helper_for(cfg, registry)
        auths = cfg.setdefault("auths", {})
        if helper:
            payload = {"ServerURL": key, "Username": creds.username, "Secret": creds.password}
            self._helper(helper, "store", json.dumps(payload).encode(), registry)
            auths[key] = {}
        else:
            auths[key] = {"auth": base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode()}
        self._save(cfg)

    def logout(self, registry: str) -> bool:
        """Forget `registry`'s credentials; False when there were none in the file."""
        cfg = DockerConfigCredentials(self._path)._load()
        key = server_key(registry)
        auths = cfg.get("auths") or {}
        had = any(_normalize_key(k) == _normalize_key(key) for k in auths)
        helper = _helper_for(cfg, registry)
        if helper:
            self._helper(helper, "erase", key.encode(), registry, missing_ok=True)
        if had:
            cfg["auths"] = {k: v for k, v in auths.items() if _normalize_key(k) != _normalize_key(key)}
            self._save(cfg)
        return had

    def _helper(self, helper: str, action: str, data: bytes, registry: str, *, missing_ok: bool = False) -> None:
        if not re.fullmatch(r"[A-Za-z0-9._-]+", helper):
            raise AuthError(f"invalid credential helper name {helper!r}")
        try:
            proc = self._run([f"docker-credential-{helper}", action], input=data, capture_output=True,
                             timeout=self._timeout, check=False)
        except (OSError, subprocess.SubprocessError) as e:
            raise AuthError(f"credential helper docker-credential-{helper} {action} failed: {e}") from e
        msg = ((proc.stdout or b"") + (proc.stderr or b"")).decode(errors="replace").strip()
        if proc.returncode != 0 and not (missing_ok and "not found" in msg.lower()):
            raise AuthError(f"credential helper docker-credential-{helper} {action} for {registry}: "
                            f"exit {proc.returncode}: {msg[:200]}")

    def _save(self, cfg: dict) -> None:
        from builder.store.content import atomic_write
        self._path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        atomic_write(self._path, json.dumps(cfg, indent="\t").encode() + b"\n", mode=0o600)


def _helper_for(cfg: Mapping[str, object], registry: str) -> str:
    helpers = cfg.get("credHelpers") or {}
    if not isinstance(helpers, Mapping):
        helpers = {}
    for key in (registry, server_key(registry), *(_HUB_KEYS if registry in _HUB_KEYS else ())):
        if helpers.get(key):
            return str(helpers[key])
    return str(cfg.get("credsStore") or "")
