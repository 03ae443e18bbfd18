"""Registry authentication: 401 challenges, bearer tokens, basic auth, docker credentials.

Flow (distribution token spec): a request answered 401 carries `WWW-Authenticate`. For
`Bearer realm=...,service=...,scope=...` the `Authenticator` GETs the realm with `service` and
the wanted `scope` (basic credentials attached when known) and uses `token` (or `access_token`)
from the JSON answer; tokens are cached per (registry, scope) until they expire. For `Basic` the
credentials themselves are sent. Credentials come from a `CredentialProvider`, usually
`DockerConfigCredentials` over `~/.docker/config.json` (`auths`, `credHelpers`, `credsStore`).

Library code never reads the environment: `docker_config_path(env)` takes the mapping the CLI
passes in.
"""
from __future__ import annotations

import base64
import json
import re
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, Protocol

from builder.errors import AuthError

if TYPE_CHECKING:   # requests is imported where tokens are fetched: the CLI imports this module early
    import requests

_HUB_KEYS = ("https://index.docker.io/v1/", "index.docker.io", "docker.io", "registry-1.docker.io")
_HUB_SERVER = "https://index.docker.io/v1/"
_DEFAULT_TOKEN_TTL = 60.0
_TOKEN_SLACK = 10.0
_MAX_TOKEN_BYTES = 1 << 20


# --------------------------------------------------------------------------- challenges
@dataclass(frozen=True, slots=True, kw_only=True)
class Challenge:
    """One auth challenge from `WWW-Authenticate`; `scheme` is lower-case, params keep order."""
    scheme: str
    params: tuple[tuple[str, str], ...] = ()

    def param(self, key: str) -> str:
        for k, v in self.params:
            if k == key:
                return v
        return ""

    @property
    def realm(self) -> str:
        return self.param("realm")

    @property
    def service(self) -> str:
        return self.param("service")

    @property
    def scope(self) -> str:
        return self.param("scope")


_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_PARAM_RE = re.compile(rf'\s*({_TOKEN})\s*=\s*(?:"((?:[^"\\]|\\.)*)"|({_TOKEN}|[^,\s]*))\s*')
_SCHEME_RE = re.compile(rf"\s*({_TOKEN})(?:\s+|$)")


def parse_challenges(header: str) -> tuple[Challenge, ...]:
    """Parse a `WWW-Authenticate` value into challenges (RFC 7235; quoted strings may hold commas).

    Unparseable trailing text is ignored rather than failing the request."""
    out: list[Challenge] = []
    pos, n = 0, len(header)
    while pos < n:
        while pos < n and header[pos] in ", \t":
            pos += 1
        m = _SCHEME_RE.match(header, pos)
        if m is None:
            break
        scheme, pos = m.group(1).lower(), m.end()
        params: list[tuple[str, str]] = []
        while pos < n:
            pm = _PARAM_RE.match(header, pos)
            if pm is None:
                break
            quoted, plain = pm.group(2), pm.group(3)
            value = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else plain
            params.append((pm.group(1).lower(), value))
            pos = pm.end()
            if pos < n and header[pos] == ",":
                pos += 1
        out.append(Challenge(scheme=scheme, params=tuple(params)))
    return tuple(out)


# --------------------------------------------------------------------------- credentials
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


# --------------------------------------------------------------------------- authenticator
def basic_header(creds: Credentials) -> str:
    return "Basic " + base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode()


class Authenticator:
    """Turns challenges into `Authorization` header values and caches them.

    Thread-safe. `header(registry, scope)` returns a cached value or None; after a 401 the client
    calls `respond(registry, www_authenticate, scope)`, which fetches a token (or builds a basic
    header), caches and returns it, or raises AuthError."""

    def __init__(self, session: requests.Session, credentials: CredentialProvider | None = None, *,
                 config_path: Path | None = None, clock: Callable[[], float] = time.monotonic,
                 timeout: float = 30.0) -> None:
        """`credentials` wins; else `config_path` (a docker config.json) is used when given."""
        self._session = session
        if credentials is None and config_path is not None:
            credentials = DockerConfigCredentials(config_path)
        self._creds = credentials
        self._clock = clock
        self._timeout = timeout
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, str], tuple[str, float]] = {}
        self._basic: dict[str, str] = {}

    def header(self, registry: str, scope: str) -> str | None:
        with self._lock:
            if registry in self._basic:
                return self._basic[registry]
            hit = self._cache.get((registry, scope))
            if hit is None:
                return None
            value, expires = hit
            if self._clock() >= expires:
                del self._cache[(registry, scope)]
                return None
            return value

    def forget(self, registry: str, scope: str) -> None:
        """Drop cached auth (after it was rejected)."""
        with self._lock:
            self._cache.pop((registry, scope), None)
            self._basic.pop(registry, None)

    def respond(self, registry: str, www_authenticate: str, scope: str) -> str:
        challenges = parse_challenges(www_authenticate)
        bearer = next((c for c in challenges if c.scheme == "bearer"), None)
        if bearer is not None:
            return self._bearer(registry, bearer, scope)
        if any(c.scheme == "basic" for c in challenges):
            creds = self._credentials(registry)
            if creds is None or not creds.username:
                raise AuthError(f"{registry}: registry requires basic auth and no credentials are configured")
            value = basic_header(creds)
            with self._lock:
                self._basic[registry] = value
            return value
        raise AuthError(f"{registry}: unsupported auth challenge {www_authenticate!r}")

    def _credentials(self, registry: str) -> Credentials | None:
        return self._creds.get(registry) if self._creds is not None else None

    def _bearer(self, registry: str, ch: Challenge, scope: str) -> str:
        if not ch.realm.startswith(("https://", "http://")):
            raise AuthError(f"{registry}: bearer challenge without a usable realm: {ch.realm!r}")
        creds = self._credentials(registry)
        token, ttl = self._fetch_token(registry, ch, scope, creds)
        value = f"Bearer {token}"
        with self._lock:
            self._cache[(registry, scope)] = (value, self._clock() + max(ttl - _TOKEN_SLACK, 1.0))
        return value

    def _fetch_token(self, registry: str, ch: Challenge, scope: str,
                     creds: Credentials | None) -> tuple[str, float]:
        import requests
        params: list[tuple[str, str]] = []
        if ch.service:
            params.append(("service", ch.service))
        for s in (scope or ch.scope).split(" "):
            if s:
                params.append(("scope", s))
        try:
            if creds is not None and creds.identity_token:
                data = {**dict(params), "grant_type": "refresh_token", "refresh_token": creds.identity_token,
                        "client_id": "pybuild"}
                resp = self._session.post(ch.realm, data=data, timeout=self._timeout, allow_redirects=False)
            else:
                auth = (creds.username, creds.password) if creds is not None and creds.username else None
                resp = self._session.get(ch.realm, params=params, auth=auth, timeout=self._timeout,
                                         allow_redirects=False)
            body = resp.content[:_MAX_TOKEN_BYTES]
        except requests.RequestException as e:
            raise AuthError(f"{registry}: token request to {ch.realm} failed: {e}") from e
        if resp.status_code in (401, 403):
            raise AuthError(f"{registry}: token request for scope {scope!r} denied "
                            f"(HTTP {resp.status_code}); check credentials")
        if resp.status_code != 200:
            raise AuthError(f"{registry}: token request to {ch.realm} returned HTTP {resp.status_code}")
        try:
            doc = json.loads(body)
            token = doc.get("token") or doc.get("access_token")
            ttl = float(doc.get("expires_in") or _DEFAULT_TOKEN_TTL)
        except (ValueError, AttributeError, TypeError) as e:
            raise AuthError(f"{registry}: token endpoint returned invalid JSON") from e
        if not token or not isinstance(token, str):
            raise AuthError(f"{registry}: token endpoint returned no token")
        return token, ttl
