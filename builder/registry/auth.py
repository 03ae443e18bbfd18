"""Registry authentication: 401 challenges, bearer tokens, basic auth.

Flow (distribution token spec): a request answered 401 carries `WWW-Authenticate`. For
`Bearer realm=...,service=...,scope=...` the `Authenticator` GETs the realm with `service` and
the wanted `scope` and uses `token` (or `access_token`) from the JSON answer, read as a stream
capped at 1 MiB; tokens are cached per (registry, scope) until they expire. For `Basic` the
credentials themselves are sent. Credentials come from a `CredentialProvider` (see
`builder.registry.credentials`), usually `DockerConfigCredentials` over `~/.docker/config.json`.

Credentials configured for a registry go to a token realm only when `may_send_credentials`
says the realm's host belongs to that registry (same host, a subdomain such as auth.docker.io
for docker.io, or a parent domain such as gitlab.com for registry.gitlab.com) and, for another
host than the registry's own, only over HTTPS; otherwise the token is requested anonymously.
Token requests go through `builder.registry.http.HttpClient` (timeouts, retries, checked
redirects: the Authorization header never follows a redirect to another origin).
"""
from __future__ import annotations

import base64
import ipaddress
import json
import math
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable
from urllib.parse import urlencode, urlsplit

from builder.errors import AuthError, RegistryError
from builder.registry.credentials import (CredentialProvider, Credentials, DockerConfigCredentials,
                                          StaticCredentials, docker_config_path)

if TYPE_CHECKING:   # requests is imported where tokens are fetched: the CLI imports this module early
    import requests

    from builder.registry.http import HttpClient

__all__ = ["Authenticator", "Challenge", "CredentialProvider", "Credentials", "DockerConfigCredentials",
           "StaticCredentials", "basic_header", "docker_config_path", "may_send_credentials", "parse_challenges"]

_DEFAULT_TOKEN_TTL = 60.0
_MAX_TOKEN_TTL = 24 * 3600.0
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


# --------------------------------------------------------------------------- authenticator
def basic_header(creds: Credentials) -> str:
    return "Basic " + base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode()


def _hostname(host_or_url: str) -> str:
    try:
        target = host_or_url if "://" in host_or_url else f"//{host_or_url}"
        return (urlsplit(target).hostname or "").lower().rstrip(".")
    except ValueError:
        return ""


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def may_send_credentials(registry: str, realm: str) -> bool:
    """Whether credentials configured for `registry` (`host[:port]`) may go to token realm URL
    `realm`: its host is the registry's host (any port), or over HTTPS a subdomain of it
    (auth.docker.io for docker.io) or a parent domain of at least two labels (gitlab.com for
    registry.gitlab.com). IP addresses match only themselves."""
    reg, host = _hostname(registry), _hostname(realm)
    if not reg or not host:
        return False
    if host == reg:
        return True
    if urlsplit(realm).scheme != "https" or _is_ip(reg) or _is_ip(host):
        return False
    if host.endswith("." + reg):
        return True
    return reg.endswith("." + host) and host.count(".") >= 1


@dataclass(frozen=True, slots=True, kw_only=True)
class _TokenRequest:
    registry: str
    realm: str
    scope: str
    withheld: bool        # credentials exist but were not sent: the realm is on another host

    def denied_hint(self) -> str:
        if self.withheld:
            return (f"; credentials for {self.registry} were not sent to {_hostname(self.realm)}, "
                    "which is another host")
        return "; check credentials"


class Authenticator:
    """Turns challenges into `Authorization` header values and caches them.

    Thread-safe. `header(registry, scope)` returns a cached value or None; after a 401 the client
    calls `respond(registry, www_authenticate, scope)`, which fetches a token (or builds a basic
    header), caches and returns it, or raises AuthError (with the HTTP status and distribution
    error codes of a token endpoint's refusal)."""

    def __init__(self, session: requests.Session, credentials: CredentialProvider | None = None, *,
                 config_path: Path | None = None, clock: Callable[[], float] = time.monotonic,
                 timeout: float = 30.0, http: HttpClient | None = None) -> None:
        """`credentials` wins; else `config_path` (a docker config.json) is used when given.
        Token requests use `http`, else an `HttpClient` over `session` made on first use."""
        self._session = session
        if credentials is None and config_path is not None:
            credentials = DockerConfigCredentials(config_path)
        self._creds = credentials
        self._clock = clock
        self._timeout = timeout
        self._http = http
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
                raise AuthError(f"{registry}: registry requires basic auth and no credentials are configured",
                                status=401)
            value = basic_header(creds)
            with self._lock:
                self._basic[registry] = value
            return value
        raise AuthError(f"{registry}: unsupported auth challenge {www_authenticate!r}", status=401)

    def _credentials(self, registry: str) -> Credentials | None:
        return self._creds.get(registry) if self._creds is not None else None

    def _client(self) -> HttpClient:
        if self._http is None:
            from builder.registry.http import HttpClient
            self._http = HttpClient(self._session, timeout=self._timeout)
        return self._http

    def _bearer(self, registry: str, ch: Challenge, scope: str) -> str:
        if not ch.realm.startswith(("https://", "http://")):
            raise AuthError(f"{registry}: bearer challenge without a usable realm: {ch.realm!r}", status=401)
        creds = self._credentials(registry)
        withheld = creds is not None and not may_send_credentials(registry, ch.realm)
        req = _TokenRequest(registry=registry, realm=ch.realm, scope=scope, withheld=withheld)
        token, ttl = self._fetch_token(req, ch, None if withheld else creds)
        value = f"Bearer {token}"
        with self._lock:
            self._cache[(registry, scope)] = (value, self._clock() + max(ttl - _TOKEN_SLACK, 1.0))
        return value

    def _fetch_token(self, req: _TokenRequest, ch: Challenge, creds: Credentials | None) -> tuple[str, float]:
        params: list[tuple[str, str]] = [("service", ch.service)] if ch.service else []
        params += [("scope", s) for s in (req.scope or ch.scope).split(" ") if s]
        headers: dict[str, str] = {}
        auth: str | None = None
        if creds is not None and creds.identity_token:
            form = {**dict(params), "grant_type": "refresh_token", "refresh_token": creds.identity_token,
                    "client_id": "pybuild"}
            data = urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            method, url, body = "POST", req.realm, (lambda: data)
        else:
            sep = "&" if "?" in req.realm else "?"
            method, url, body = "GET", req.realm + (sep + urlencode(params) if params else ""), None
            if creds is not None and creds.username:
                auth = basic_header(creds)
        try:
            resp = self._client().request(method, url, label=req.registry, headers=headers, body=body, auth=auth)
        except RegistryError as e:
            raise AuthError(f"{req.registry}: token request to {req.realm} failed: {e.message}",
                            status=e.status) from e
        from builder.registry.http import released
        with released(resp):
            return _read_token(resp, req)


def _read_token(resp: requests.Response, req: _TokenRequest) -> tuple[str, float]:
    """(token, ttl seconds) from a token endpoint's answer; AuthError with status and codes."""
    from builder.registry.http import error_body, read_capped
    code = resp.status_code
    if code != 200:
        body = error_body(resp)
        detail = f": {body.detail}" if body.detail else ""
        if code in (401, 403):
            raise AuthError(f"{req.registry}: token request for scope {req.scope!r} denied "
                            f"(HTTP {code}{detail}){req.denied_hint()}", status=code, codes=body.codes)
        raise AuthError(f"{req.registry}: token request to {req.realm} returned HTTP {code}{detail}",
                        status=code, codes=body.codes)
    raw = read_capped(resp, _MAX_TOKEN_BYTES, f"{req.registry}: token response from {req.realm}", error=AuthError)
    try:
        doc = json.loads(raw)
        token = doc.get("token") or doc.get("access_token")
        ttl = float(doc.get("expires_in") or _DEFAULT_TOKEN_TTL)
    except (ValueError, AttributeError, TypeError, OverflowError) as e:
        raise AuthError(f"{req.registry}: token endpoint returned invalid JSON", status=code) from e
    if not token or not isinstance(token, str):
        raise AuthError(f"{req.registry}: token endpoint returned no token", status=code)
    if not math.isfinite(ttl) or ttl <= 0:
        ttl = _DEFAULT_TOKEN_TTL
    return token, min(ttl, _MAX_TOKEN_TTL)
