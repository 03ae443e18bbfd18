"""OCI distribution API client over an injected `requests.Session`.

Contracts:
- plain HTTP for localhost, 127.0.0.0/8, ::1 and `insecure_hosts`; HTTPS otherwise.
- every manifest is capped at 4 MiB and checked against the pinned digest and the
  `Docker-Content-Digest` header; every blob is streamed, hashed and counted while it is written
  to the caller's sink, and a mismatch raises DigestMismatchError (the sink then holds garbage:
  callers write to a store ingest writer and only commit on success).
- transport (timeouts, retries of 429/5xx/connection failures honouring `Retry-After`,
  redirects followed by hand with `Authorization` only for the registry's origin and no HTTPS →
  HTTP downgrade) is `builder.registry.http.HttpClient`'s. Upload `Location`s must stay on the
  registry origin.
- errors: AuthError (401/403 after auth), NotFoundError (404), RegistryError otherwise; each
  carries the HTTP `status` and the distribution error `codes` of the body, and its message names
  the reference (registry/repository), the HTTP status and the codes.
"""
from __future__ import annotations

import hashlib
import json
import random
import threading
import time
from typing import Any, BinaryIO, Callable, Collection
from urllib.parse import urlencode, urljoin

import requests

from builder.registry.auth import Authenticator
from builder.registry.http import (Body, HttpClient, RetryPolicy, Sink, check_url, discard, error_body,
                                   read_capped, released)
from builder.image.digest import Digest
from builder.errors import AuthError, DigestMismatchError, NotFoundError, RegistryError
from builder.image.oci import MAX_MANIFEST_SIZE, Descriptor, Index, Manifest, MediaType, Platform, pick_platform
from builder.image.reference import Reference

CHUNK = 1 << 20
_ACCEPT = ", ".join(MediaType.MANIFESTS + MediaType.INDEXES)
_MAX_INDEX_DEPTH = 4
_DEFAULT_CODES = {401: ("UNAUTHORIZED",), 403: ("DENIED",)}


class RegistryClient:
    """Pull and push primitives of the distribution spec. Thread-safe if the session is."""

    def __init__(self, session: requests.Session, *, auth: Authenticator, insecure_hosts: Collection[str] = (),
                 sleep: Callable[[float], None] = time.sleep, max_tries: int = 4, backoff: float = 0.5,
                 max_retry_after: float = 60.0, timeout: float = 60.0,
                 jitter: Callable[[], float] = random.random,
                 verify: Callable[[str], "bool | str"] | None = None,
                 mirrors: Callable[[str], tuple[str, ...]] = lambda registry: ()) -> None:
        """`verify`: requests' `verify` per HTTPS host (see HttpClient); `mirrors(registry)`: hosts
        that pulls of `registry`'s images try first (`mirrors_for`)."""
        self.mirrors = mirrors
        self._auth = auth
        self._locks_lock = threading.Lock()
        self._scope_locks: dict[tuple[str, str], threading.Lock] = {}
        self._http = HttpClient(session, insecure_hosts=insecure_hosts, sleep=sleep, jitter=jitter, timeout=timeout,
                                retry=RetryPolicy(max_tries=max_tries, backoff=backoff,
                                                  max_retry_after=max_retry_after), verify=verify)

    def close(self) -> None:
        """Close the HTTP session."""
        self._http.close()

    # ------------------------------------------------------------------ urls
    def scheme(self, ref: Reference) -> str:
        return self._http.scheme_for(ref.api_host)

    def base_url(self, ref: Reference) -> str:
        return f"{self.scheme(ref)}://{ref.api_host}"

    def _url(self, ref: Reference, kind: str, ident: str) -> str:
        return f"{self.base_url(ref)}/v2/{ref.repository}/{kind}/{ident}"

    # ------------------------------------------------------------------ pull
    def get_manifest(self, ref: Reference) -> tuple[Descriptor, bytes]:
        """Fetch the manifest or index `ref` names; return its descriptor (media type, digest,
        size) and exact bytes. Verified against `ref.digest` or Docker-Content-Digest; capped."""
        resp = self._send("GET", ref, self._url(ref, "manifests", ref.identifier),
                          headers={"Accept": _ACCEPT})
        with released(resp):
            self._check(resp, ref, "manifest", (200,))
            raw = read_capped(resp, MAX_MANIFEST_SIZE, f"{ref}: manifest")
            header_digest = resp.headers.get("Docker-Content-Digest", "")
            content_type = resp.headers.get("Content-Type", "")
        expected = ref.digest
        if expected is None and header_digest:
            try:
                expected = Digest.parse(header_digest.strip())
            except ValueError:
                expected = None
        actual = _digest_of(raw, expected.algorithm if expected else "sha256")
        if expected is not None and expected != actual:
            raise DigestMismatchError(str(expected), str(actual), f"manifest {ref}")
        return Descriptor(media_type=_manifest_media_type(content_type, raw, ref), digest=actual, size=len(raw)), raw

    def resolve_bytes(self, ref: Reference, platform: Platform) -> tuple[Descriptor, bytes]:
        """Like `resolve` but returns the platform manifest's exact bytes."""
        desc, raw = self.get_manifest(ref)
        for _ in range(_MAX_INDEX_DEPTH):
            if desc.media_type not in MediaType.INDEXES:
                return desc, raw
            child = pick_platform(Index.from_bytes(raw), platform)
            if child is None:
                avail = ", ".join(str(m.platform) for m in Index.from_bytes(raw).manifests if m.platform) or "none"
                raise NotFoundError(f"{ref}: no manifest for platform {platform} (available: {avail})")
            got, raw = self.get_manifest(ref.with_digest(child.digest))
            if got.size != child.size:
                raise RegistryError(f"{ref}: manifest {child.digest} is {got.size} bytes, index says {child.size}")
            desc = Descriptor(media_type=got.media_type, digest=child.digest, size=child.size,
                              annotations=child.annotations, platform=child.platform)
        raise RegistryError(f"{ref}: image indexes nested deeper than {_MAX_INDEX_DEPTH}")

    def resolve(self, ref: Reference, platform: Platform) -> tuple[Descriptor, Manifest]:
        """The image manifest for `platform`: an index is resolved through `Platform.matches`."""
        desc, raw = self.resolve_bytes(ref, platform)
        try:
            return desc, Manifest.from_bytes(raw)
        except (ValueError, KeyError, TypeError) as e:
            raise RegistryError(f"{ref}: malformed manifest {desc.digest}: {e}") from e

    def fetch_blob(self, ref: Reference, desc: Descriptor, sink: Sink) -> None:
        """Stream blob `desc` from `ref`'s repository into `sink` (not closed), verifying size and
        digest; raise DigestMismatchError after the last byte if they differ."""
        resp = self._send("GET", ref, self._url(ref, "blobs", str(desc.digest)))
        with released(resp):
            self._check(resp, ref, f"blob {desc.digest}", (200,))
            h, size = desc.digest.hasher(), 0
            try:
                for chunk in resp.iter_content(CHUNK):
                    size += len(chunk)
                    if size > desc.size:
                        raise DigestMismatchError(f"{desc.digest} ({desc.size} bytes)",
                                                  f"more than {desc.size} bytes", f"blob {ref.name}@{desc.digest}")
                    h.update(chunk)
                    sink.write(chunk)
            except requests.RequestException as e:
                raise RegistryError(f"{ref}: blob {desc.digest}: transfer failed after {size} bytes: {e}",
                                    status=resp.status_code) from e
        actual = Digest(desc.digest.algorithm, h.hexdigest())
        if size != desc.size or actual != desc.digest:
            raise DigestMismatchError(f"{desc.digest} ({desc.size} bytes)", f"{actual} ({size} bytes)",
                                      f"blob {ref.name}@{desc.digest}")

    # ------------------------------------------------------------------ push
    def blob_exists(self, ref: Reference, digest: Digest) -> bool:
        resp = self._send("HEAD", ref, self._url(ref, "blobs", str(digest)), actions="pull,push")
        with released(resp):
            if resp.status_code == 404:
                return False
            self._check(resp, ref, f"blob {digest}", (200,))
            return True

    def upload_blob(self, ref: Reference, desc: Descriptor, open_fn: Callable[[], BinaryIO], *,
                    mount_from: Reference | None = None, chunk_size: int | None = None) -> str:
        """Make blob `desc` exist in `ref`'s repository. Returns "exists", "mounted" or "uploaded".

        HEAD first; then a cross-repo mount from `mount_from` (same registry) when given; else a
        POST and the body from `open_fn()` (called once per attempt; the stream is closed here):
        one monolithic PUT, or PATCH chunks of `chunk_size` bytes then a closing PUT when the blob
        is larger than `chunk_size`. A failed upload raises; callers restart it from the start."""
        if self.blob_exists(ref, desc.digest):
            return "exists"
        location = self._start_upload(ref, desc, mount_from)
        if location is None:
            return "mounted"
        body: Body = open_fn
        length = desc.size
        if chunk_size is not None and desc.size > chunk_size:
            location = self._patch_chunks(ref, desc, location, open_fn, chunk_size)
            body, length = (lambda: b""), 0
        sep = "&" if "?" in location else "?"
        put_url = f"{location}{sep}{urlencode({'digest': str(desc.digest)})}"
        resp = self._send("PUT", ref, put_url, actions="pull,push", body=body,
                          headers={"Content-Type": "application/octet-stream", "Content-Length": str(length)})
        with released(resp):
            self._check(resp, ref, f"blob upload {desc.digest}", (201, 204))
        return "uploaded"

    def _start_upload(self, ref: Reference, desc: Descriptor, mount_from: Reference | None) -> str | None:
        """POST an upload (with `?mount=&from=` when `mount_from` is another repository of the same
        registry): None when the registry mounted the blob, else the upload Location."""
        uploads = f"{self.base_url(ref)}/v2/{ref.repository}/blobs/uploads/"
        extra: tuple[str, ...] = ()
        if mount_from is not None and mount_from.registry == ref.registry and mount_from.repository != ref.repository:
            uploads += "?" + urlencode({"mount": str(desc.digest), "from": mount_from.repository})
            extra = (f"repository:{mount_from.repository}:pull",)
        resp = self._send("POST", ref, uploads, actions="pull,push", extra_scopes=extra,
                          headers={"Content-Length": "0"})
        with released(resp):
            if resp.status_code == 201 and extra:
                return None
            self._check(resp, ref, f"blob upload {desc.digest}", (202,))
            return self._upload_location(ref, resp)

    def _patch_chunks(self, ref: Reference, desc: Descriptor, location: str, open_fn: Callable[[], BinaryIO],
                      chunk_size: int) -> str:
        """Send the blob as PATCH chunks (`Content-Range: start-end`); the Location to close with."""
        offset = 0
        with open_fn() as stream:
            while offset < desc.size:
                data = stream.read(min(chunk_size, desc.size - offset))
                if not data:
                    raise RegistryError(f"{ref}: blob {desc.digest}: source ended after {offset} of {desc.size} bytes")
                end = offset + len(data) - 1
                resp = self._send("PATCH", ref, location, actions="pull,push", body=lambda d=data: d,  # type: ignore[misc]
                                  headers={"Content-Type": "application/octet-stream",
                                           "Content-Range": f"{offset}-{end}", "Content-Length": str(len(data))})
                with released(resp):
                    self._check(resp, ref, f"blob upload {desc.digest} (bytes {offset}-{end})", (202,))
                    location = self._upload_location(ref, resp)
                offset += len(data)
        return location

    def put_manifest(self, ref: Reference, media_type: str, data: bytes) -> Descriptor:
        """PUT manifest/index `data` at `ref` (tag or digest); return its descriptor."""
        actual = Digest.of_bytes(data)
        if ref.digest is not None and ref.digest != actual:
            raise DigestMismatchError(str(ref.digest), str(actual), f"manifest for {ref}")
        resp = self._send("PUT", ref, self._url(ref, "manifests", ref.identifier), actions="pull,push",
                          body=lambda: data, headers={"Content-Type": media_type})
        with released(resp):
            self._check(resp, ref, "manifest upload", (200, 201, 202))
            echoed = resp.headers.get("Docker-Content-Digest", "").strip()
        if echoed and echoed != str(actual):
            raise DigestMismatchError(str(actual), echoed, f"pushed manifest {ref}")
        return Descriptor(media_type=media_type, digest=actual, size=len(data))

    def _upload_location(self, ref: Reference, resp: requests.Response) -> str:
        loc = resp.headers.get("Location")
        if not loc:
            raise RegistryError(f"{ref}: upload started (HTTP {resp.status_code}) without a Location",
                                status=resp.status_code)
        url = urljoin(self.base_url(ref) + "/", loc)
        if check_url(url, str(ref)) != check_url(self.base_url(ref), str(ref)):
            raise RegistryError(f"{ref}: upload Location {url!r} leaves the registry origin")
        return url

    def ping(self, registry: str) -> None:
        """`GET /v2/` on `registry` with its credentials (as `docker login` checks them): returns
        when the registry accepts them, AuthError when it refuses them, RegistryError otherwise."""
        url = f"{self._http.scheme_for(registry)}://{registry}/v2/"
        if registry == "docker.io":
            url = "https://registry-1.docker.io/v2/"
        resp = self._http.request("GET", url, label=registry)
        if resp.status_code == 401 and resp.headers.get("WWW-Authenticate"):
            challenge = resp.headers["WWW-Authenticate"]
            discard(resp)
            auth = self._auth.respond(registry, challenge, "")
            resp = self._http.request("GET", url, label=registry, auth=auth)
        with released(resp):
            if resp.status_code != 200:
                body = error_body(resp)
                msg = f"{registry}: login: HTTP {resp.status_code}" + (f": {body.detail}" if body.detail else "")
                cls = AuthError if resp.status_code in (401, 403) else RegistryError
                raise cls(msg, status=resp.status_code, codes=body.codes)

    # ------------------------------------------------------------------ transport
    def _send(self, method: str, ref: Reference, url: str, *, actions: str = "pull",
              extra_scopes: tuple[str, ...] = (), headers: dict[str, str] | None = None,
              body: Body | None = None) -> requests.Response:
        """One logical request with the cached auth; after a 401 challenge, once more with fresh
        auth. Returns the final (streamed) response, possibly an error status: the caller checks."""
        scope = " ".join((f"repository:{ref.repository}:{actions}", *extra_scopes))
        auth = self._auth.header(ref.registry, scope)
        resp = self._http.request(method, url, label=str(ref), headers=headers, body=body, auth=auth)
        if resp.status_code != 401:
            return resp
        challenge = resp.headers.get("WWW-Authenticate", "")
        if not challenge:
            with released(resp):
                raise self._error(resp, ref, f"{method} {url}", note="without WWW-Authenticate")
        first = error_body(resp)
        discard(resp)
        try:
            auth = self._fresh_auth(ref.registry, challenge, scope, auth)
        except AuthError as e:      # name the repository and the registry's own error code too
            codes = tuple(dict.fromkeys((*e.codes, *first.codes))) or ("UNAUTHORIZED",)
            text = e.message.removeprefix(f"{ref.registry}: ")
            raise AuthError(f"{ref.name}: {text}" + "".join(f" [{c}]" for c in codes if c not in text),
                            status=e.status, codes=codes) from e
        resp = self._http.request(method, url, label=str(ref), headers=headers, body=body, auth=auth)
        if resp.status_code == 401:
            with released(resp):
                raise self._error(resp, ref, f"{method} {url}", note=f"credentials rejected for scope {scope!r}")
        return resp

    def _fresh_auth(self, registry: str, challenge: str, scope: str, stale: str | None) -> str:
        """Auth for `scope` after a 401 to `stale`: one token request per scope at a time, so
        parallel blob pushes that meet the same challenge share one token."""
        with self._locks_lock:
            lock = self._scope_locks.setdefault((registry, scope), threading.Lock())
        with lock:
            current = self._auth.header(registry, scope)
            if current is not None and current != stale:
                return current            # another thread answered this challenge meanwhile
            if current is not None:
                self._auth.forget(registry, scope)
            return self._auth.respond(registry, challenge, scope)

    def _check(self, resp: requests.Response, ref: Reference, what: str, ok: tuple[int, ...]) -> None:
        if resp.status_code not in ok:
            raise self._error(resp, ref, what)

    @staticmethod
    def _error(resp: requests.Response, ref: Reference, what: str, *, note: str = "") -> RegistryError:
        """The typed error for an error response: status, distribution codes and their messages."""
        code = resp.status_code
        body = error_body(resp)
        codes = body.codes or _DEFAULT_CODES.get(code, ())    # a HEAD answer has no body to say it
        msg = f"{ref}: {what}: HTTP {code}" + "".join(f": {x}" for x in (note, body.detail) if x)
        msg += "".join(f" [{c}]" for c in codes if c not in msg)
        cls = AuthError if code in (401, 403) else NotFoundError if code == 404 else RegistryError
        return cls(msg, status=code, codes=codes)


# ---------------------------------------------------------------------- helpers
def _digest_of(data: bytes, algorithm: str) -> Digest:
    try:
        return Digest(algorithm, hashlib.new(algorithm, data).hexdigest())
    except ValueError:
        return Digest.of_bytes(data)


def _manifest_media_type(content_type: str, raw: bytes, ref: Reference) -> str:
    ct = content_type.split(";", 1)[0].strip()
    if ct in MediaType.MANIFESTS or ct in MediaType.INDEXES:
        return ct
    try:
        doc: Any = json.loads(raw)
    except ValueError as e:
        raise RegistryError(f"{ref}: manifest is not JSON (Content-Type {ct!r})") from e
    if not isinstance(doc, dict):
        raise RegistryError(f"{ref}: manifest is not a JSON object")
    if doc.get("schemaVersion") == 1:
        raise RegistryError(f"{ref}: Docker schema 1 manifests are not supported")
    mt = doc.get("mediaType")
    if mt in MediaType.MANIFESTS or mt in MediaType.INDEXES:
        return str(mt)
    if "manifests" in doc:
        return MediaType.OCI_INDEX
    if "config" in doc:
        return MediaType.OCI_MANIFEST
    raise RegistryError(f"{ref}: unsupported manifest media type {ct or mt!r}")
