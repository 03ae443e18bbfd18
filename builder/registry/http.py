"""The one hardened HTTP client of pybuild (registry API, token realms, `ADD <url>`), over an
injected `requests.Session`.

Contracts:
- every URL (the first one and every redirect target) is checked before it is used: scheme
  http or https, a host, a port in 1..65535; a bad one is a clean RegistryError, never a traceback.
- requests have a timeout (`timeout` seconds for connect and for each read).
- 429, 5xx and connection failures are retried, at most `RetryPolicy.max_tries` attempts in all.
  Between attempts the client sleeps (through the injected `sleep`) for the server's
  `Retry-After` (seconds or an HTTP date) clamped to [0, max_retry_after]; without a usable one
  (absent, `nan`, garbage) for a jittered exponential backoff: attempt n waits a random time in
  [b·2ⁿ⁻¹/2, b·2ⁿ⁻¹] with b = `backoff` (the injected `jitter()` gives the random fraction).
  After the last attempt an error status is returned to the caller, a connection failure raises.
  A body that fails mid-stream is never retried here (the caller's sink cannot be rewound).
- redirects are followed by hand (at most 10): an HTTPS → HTTP downgrade is refused, and the
  `auth` header value is sent only to the origin (scheme, host, port) of the first URL. 303, and
  301/302 after a POST, continue as a body-less GET.
- responses are always streamed: callers read them with `read_capped` / `download` (which check
  `Content-Length` first and count while reading, so an oversized body is never read whole) and
  release them (`with released(resp):`, which drains a small rest so the connection is reused).
- errors: RegistryError (status None) for transport failures; `download` raises SourceError.
"""
from __future__ import annotations

import email.utils
import hashlib
import ipaddress
import json
import math
import random
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import BinaryIO, Callable, Collection, Iterator, Mapping, Protocol
from urllib.parse import urljoin, urlsplit

import requests

from builder.errors import RegistryError, SourceError
from builder.image.digest import Digest

CHUNK = 1 << 20
#: Largest `ADD <url>` body accepted: 8 GiB. BuildKit has no cap; this one only stops a runaway or
#: hostile server from filling the disk, and is far above any sane source archive.
DOWNLOAD_CAP = 8 << 30
ERROR_BODY_CAP = 16 << 10
REDIRECTS = (301, 302, 303, 307, 308)
MAX_REDIRECTS = 10

Body = Callable[[], "BinaryIO | bytes"]
Origin = tuple[str, str, int]


class Sink(Protocol):
    def write(self, b: bytes) -> int: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """How often and how long to retry 429, 5xx and connection failures."""
    max_tries: int = 4
    backoff: float = 0.5
    max_retry_after: float = 60.0

    def backoff_delay(self, attempt: int, fraction: float) -> float:
        """Jittered exponential backoff after failed attempt `attempt` (1-based); `fraction` in [0, 1]."""
        full = self.backoff * 2 ** (attempt - 1)
        return min(full * (0.5 + 0.5 * min(max(fraction, 0.0), 1.0)), self.max_retry_after)

    def clamp(self, seconds: float) -> float:
        """A server-given delay clamped to [0, max_retry_after] (inf → the cap)."""
        return min(max(seconds, 0.0), self.max_retry_after)


@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorBody:
    """What a distribution-spec error body (`{"errors":[{"code":..,"message":..}]}`) says."""
    codes: tuple[str, ...] = ()
    detail: str = ""


# ---------------------------------------------------------------------- pure helpers
_USERINFO_PASSWORD = re.compile(r"(//[^/?#@:]*):[^/?#@]*@")


def redact(url: str) -> str:
    """`url` with the password of its userinfo (`http://user:pw@host/`) masked, for messages."""
    return _USERINFO_PASSWORD.sub(r"\1:xxxxx@", url, count=1)


def check_url(url: str, label: str = "") -> Origin:
    """The origin of `url`; RegistryError unless it is an http(s) URL with a host and a valid port."""
    prefix = f"{label}: " if label else ""
    shown = redact(url)
    try:
        u = urlsplit(url)
        port = u.port
    except ValueError as e:
        raise RegistryError(f"{prefix}invalid URL {shown!r}: {e}") from e
    if u.scheme not in ("http", "https"):
        raise RegistryError(f"{prefix}unsupported URL scheme in {shown!r} (only http and https)")
    if not u.hostname:
        raise RegistryError(f"{prefix}invalid URL {shown!r}: no host")
    if port == 0:
        raise RegistryError(f"{prefix}invalid URL {shown!r}: port 0")
    return u.scheme, u.hostname.lower(), port or (443 if u.scheme == "https" else 80)


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` value (delta-seconds or HTTP date; may be negative or
    inf: callers clamp), or None when absent or unusable (garbage, `nan`)."""
    if not value:
        return None
    value = value.strip()
    try:
        secs = float(value)
    except ValueError:
        secs = None
    if secs is not None:
        return None if math.isnan(secs) else secs
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return (when - (now or datetime.now(timezone.utc))).total_seconds()


def content_length(resp: requests.Response) -> int | None:
    """The declared body size, or None when absent or malformed."""
    try:
        n = int(resp.headers.get("Content-Length", ""))
    except ValueError:
        return None
    return n if n >= 0 else None


def read_capped(resp: requests.Response, cap: int, what: str, *,
                error: type[RegistryError] = RegistryError) -> bytes:
    """The whole body of `resp`, refusing (with `error`) one that declares or reaches more than
    `cap` bytes: the declared size is checked before reading, the count while reading."""
    declared = content_length(resp)
    if declared is not None and declared > cap:
        raise error(f"{what}: larger than {cap} bytes (Content-Length {declared})", status=resp.status_code)
    buf = bytearray()
    try:
        for chunk in resp.iter_content(64 * 1024):
            buf += chunk
            if len(buf) > cap:
                raise error(f"{what}: larger than {cap} bytes", status=resp.status_code)
    except requests.RequestException as e:
        raise error(f"{what}: transfer failed after {len(buf)} bytes: {e}", status=resp.status_code) from e
    return bytes(buf)


def discard(resp: requests.Response, limit: int = 64 << 10) -> None:
    """Close `resp`. A body rest of at most `limit` bytes (a HEAD answer, an error or upload
    reply) is read and dropped first, so the connection goes back to the pool; a bigger one is
    not read: the connection is closed instead."""
    try:
        method = getattr(resp.request, "method", "")
        declared = content_length(resp)
        if method == "HEAD" or declared is None or declared <= limit:
            n = 0
            for chunk in resp.iter_content(16 << 10):
                n += len(chunk)
                if n > limit:
                    break
    except (requests.RequestException, OSError):
        pass
    finally:
        resp.close()


@contextmanager
def released(resp: requests.Response) -> Iterator[requests.Response]:
    """`with released(resp):` — `discard(resp)` on the way out, whatever happened."""
    try:
        yield resp
    finally:
        discard(resp)


def error_body(resp: requests.Response) -> ErrorBody:
    """Codes and messages of a distribution error body (at most 16 KiB is read); empty when the
    body is not one."""
    buf = bytearray()
    try:
        for chunk in resp.iter_content(4096):
            buf += chunk
            if len(buf) >= ERROR_BODY_CAP:
                return ErrorBody()       # too big to be an error document: not parsed
        doc = json.loads(bytes(buf) or b"null")
    except (ValueError, requests.RequestException, OSError):
        return ErrorBody()
    errs = doc.get("errors") if isinstance(doc, dict) else None
    if not isinstance(errs, list):
        return ErrorBody()
    items = [e for e in errs if isinstance(e, dict)][:10]
    codes = tuple(str(e["code"])[:64] for e in items if e.get("code"))
    detail = "; ".join(f"{str(e.get('code') or '')[:64]} {str(e.get('message') or '')[:200]}".strip()
                       for e in items[:3])
    return ErrorBody(codes=codes, detail=detail)


def _is_loopback(hostname: str) -> bool:
    if hostname == "localhost":
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


# ---------------------------------------------------------------------- client
class HttpClient:
    """Requests with timeouts, bounded retries, checked redirects and capped streaming reads.

    Thread-safe if the session is. `insecure_hosts` (`host` or `host:port`) are, like loopback
    hosts, spoken to over plain HTTP by `scheme_for` (registries); `download` accepts plain http
    URLs for any host (as BuildKit's ADD does)."""

    def __init__(self, session: requests.Session, *, insecure_hosts: Collection[str] = (),
                 sleep: Callable[[float], None] = time.sleep, jitter: Callable[[], float] = random.random,
                 retry: RetryPolicy = RetryPolicy(), timeout: float = 60.0,
                 verify: Callable[[str], "bool | str"] | None = None) -> None:
        """`verify(host[:port])` gives requests' `verify` for HTTPS to that host (a CA file, False
        for no verification, True); None: the session's own setting."""
        self._session = session
        self._verify = verify
        self._insecure = frozenset(insecure_hosts)
        self._sleep = sleep
        self._jitter = jitter
        self.retry = retry
        self._tries = max(1, retry.max_tries)
        self._timeout = timeout

    def close(self) -> None:
        self._session.close()

    def scheme_for(self, host: str) -> str:
        """"http" for loopback and insecure hosts (`host` is `name[:port]`), else "https"."""
        try:
            hostname = urlsplit(f"//{host}").hostname or host
        except ValueError:
            hostname = host
        if host in self._insecure or hostname in self._insecure or _is_loopback(hostname):
            return "http"
        return "https"

    def request(self, method: str, url: str, *, label: str = "", headers: Mapping[str, str] | None = None,
                body: Body | None = None, auth: str | None = None) -> requests.Response:
        """One logical request with retries and redirects; returns the final (streamed) response,
        possibly an error status after the last try: the caller checks it and closes it.
        `auth` is the Authorization value, sent only to the first URL's origin; `body()` is called
        once per attempt and hop (a stream it returns is closed here)."""
        home = check_url(url, label)
        for attempt in range(1, self._tries + 1):
            last = attempt == self._tries
            try:
                resp = self._follow(method, url, dict(headers or {}), body, auth, home, label)
            except (requests.ConnectionError, requests.Timeout) as e:
                if last or isinstance(e, requests.exceptions.SSLError):
                    raise RegistryError(f"{self._where(label, method, url)}: {_reason(e)} "
                                        f"(after {attempt} tries)") from e
                self._sleep(self.retry.backoff_delay(attempt, self._jitter()))
                continue
            if last or not (resp.status_code == 429 or 500 <= resp.status_code <= 599):
                return resp
            delay = parse_retry_after(resp.headers.get("Retry-After"))
            discard(resp)
            self._sleep(self.retry.backoff_delay(attempt, self._jitter()) if delay is None
                        else self.retry.clamp(delay))
        raise AssertionError("unreachable")

    def _follow(self, method: str, url: str, headers: dict[str, str], body: Body | None, auth: str | None,
                home: Origin, label: str) -> requests.Response:
        for _ in range(MAX_REDIRECTS + 1):
            here = check_url(url, label)
            h = dict(headers)
            if auth is not None and here == home:
                h["Authorization"] = auth
            resp = self._send(method, url, h, body, label)
            if resp.status_code not in REDIRECTS or "Location" not in resp.headers:
                return resp
            discard(resp)
            try:
                nxt = urljoin(url, resp.headers["Location"])
            except ValueError as e:
                raise RegistryError(f"{self._where(label, method, url)}: invalid redirect Location "
                                    f"{redact(resp.headers['Location'])!r}: {e}", status=resp.status_code) from e
            if here[0] == "https" and urlsplit(nxt).scheme != "https":
                raise RegistryError(f"{self._where(label, method, url)}: refusing redirect from HTTPS "
                                    f"to {redact(nxt)!r}", status=resp.status_code)
            if resp.status_code == 303 or (resp.status_code in (301, 302) and method == "POST"):
                method, body = "GET", None
                headers = {k: v for k, v in headers.items() if k.lower() not in ("content-length", "content-type")}
            url = nxt
        raise RegistryError(f"{self._where(label, method, url)}: more than {MAX_REDIRECTS} redirects")

    def _send(self, method: str, url: str, headers: dict[str, str], body: Body | None,
              label: str) -> requests.Response:
        data = body() if body is not None else None
        extra: dict[str, bool | str] = {}
        if self._verify is not None and url.startswith("https://"):
            extra["verify"] = self._verify(urlsplit(url).netloc.rpartition("@")[2])
        try:
            return self._session.request(method, url, headers=headers, data=data, stream=True,
                                         allow_redirects=False, timeout=self._timeout, **extra)  # type: ignore[arg-type]
        except (requests.ConnectionError, requests.Timeout):
            raise
        except (requests.RequestException, ValueError) as e:   # invalid URL, header, proxy, …
            raise RegistryError(f"{self._where(label, method, url)}: {_reason(e)}") from e
        finally:
            if data is not None and hasattr(data, "close"):
                data.close()

    @staticmethod
    def _where(label: str, method: str, url: str) -> str:
        return f"{label}: {method} {redact(url)}" if label else f"{method} {redact(url)}"

    # ------------------------------------------------------------------ ADD <url>
    def download(self, url: str, sink: BinaryIO, *, max_bytes: int = DOWNLOAD_CAP) -> tuple[Digest, int]:
        """GET `url` and stream its body into `sink` (not closed); return its sha256 Digest and
        size. Plain http is allowed. SourceError when the URL is bad, the network fails after the
        retries, the final status is not 200, the body declares or reaches more than `max_bytes`
        (the sink then holds a partial body: the caller discards it), or writing the sink fails.
        A body that fails mid-stream is not retried."""
        shown = redact(url)
        try:
            resp = self.request("GET", url)
        except RegistryError as e:
            raise SourceError(e.message) from e
        with released(resp):
            if resp.status_code != 200:
                raise SourceError(f"{shown}: HTTP {resp.status_code}")
            declared = content_length(resp)
            if declared is not None and declared > max_bytes:
                raise SourceError(f"{shown}: {declared} bytes, more than the {max_bytes}-byte download cap")
            h, size = hashlib.sha256(), 0
            try:
                for chunk in resp.iter_content(CHUNK):
                    size += len(chunk)
                    if size > max_bytes:
                        raise SourceError(f"{shown}: more than the {max_bytes}-byte download cap")
                    h.update(chunk)
                    sink.write(chunk)
            except requests.RequestException as e:
                raise SourceError(f"{shown}: transfer failed after {size} bytes: {_reason(e)}") from e
            except OSError as e:            # the sink: disk full, closed file, …
                raise SourceError(f"{shown}: cannot store the download: {e}") from e
        return Digest("sha256", h.hexdigest()), size


def _reason(e: BaseException) -> str:
    """A one-line reason for a requests/urllib3 failure (their messages nest reprs of reprs)."""
    text = str(e) or type(e).__name__
    return text if len(text) <= 300 else text[:297] + "..."
