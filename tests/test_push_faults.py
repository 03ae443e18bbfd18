"""Push through a fault-injecting proxy in front of the real docker-registry: connection resets
mid-blob, 429 with Retry-After, 500s, an upload Location on another origin, a blob whose bytes do
not match its digest. Each push ends in success or a clear error, and afterwards (checked on the
real registry, not through the proxy) a tag never points at a manifest whose blobs are missing."""
from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

import pytest
import requests

from builder.errors import RegistryError
from builder.image.reference import Reference
from builder.registry.auth import Authenticator
from builder.registry.client import RegistryClient
from builder.registry.push import PushOptions, push_image
from registry_fixture import FakeRequest, FakeResponse, FakeServer, fake_http  # noqa: F401  (fixture)
from test_push import stored_image

_HOP = {"connection", "transfer-encoding", "keep-alive", "host", "content-length"}


@dataclass
class Proxy:
    """Forwards to the registry; `fault(request, n)` (n: how many earlier requests had the same
    method and path kind) may answer instead (return a FakeResponse), or return None to forward."""
    registry: str
    fault: Callable[[FakeRequest, int], FakeResponse | None]
    counts: dict[tuple[str, str], int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    origin: str = ""
    fired: list[str] = field(default_factory=list)

    def __call__(self, req: FakeRequest) -> FakeResponse:
        key = (req.method, _kind(req.path))
        with self.lock:
            n = self.counts.get(key, 0)
            self.counts[key] = n + 1
        answer = self.fault(req, n)
        if answer is not None:
            self.fired.append(f"{req.method} {_kind(req.path)} #{n}")
        return answer if answer is not None else self.forward(req)

    def forward(self, req: FakeRequest, body: bytes | None = None) -> FakeResponse:
        headers = {k: v for k, v in req.headers.items() if k not in _HOP}
        r = requests.request(req.method, f"http://{self.registry}{req.path}", headers=headers,
                             data=req.body if body is None else body, allow_redirects=False, timeout=30)
        out = {k: v for k, v in r.headers.items() if k.lower() not in _HOP}
        if req.method == "HEAD" and "Content-Length" in r.headers:
            out["Content-Length"] = r.headers["Content-Length"]
        if "Location" in out:
            out["Location"] = out["Location"].replace(f"http://{self.registry}", self.origin)
        return FakeResponse(status=r.status_code, headers=out, body=r.content)


def _kind(path: str) -> str:
    p = urlsplit(path).path
    for k in ("/blobs/uploads/", "/blobs/", "/manifests/"):
        if k in p:
            return k.strip("/")
    return p


def _client(sleeps: list[float]) -> RegistryClient:
    s = requests.Session()
    return RegistryClient(s, auth=Authenticator(s), sleep=sleeps.append, jitter=lambda: 1.0, backoff=0.01)


def _tag_is_whole(registry: str, repo: str, tag: str) -> bool:
    """Whether `repo:tag` on the real registry is absent (False) or names only blobs it has."""
    r = requests.get(f"http://{registry}/v2/{repo}/manifests/{tag}", timeout=10,
                     headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    if r.status_code == 404:
        return False
    assert r.status_code == 200, r.text
    man = json.loads(r.content)
    for d in (man["config"], *man["layers"]):
        h = requests.head(f"http://{registry}/v2/{repo}/blobs/{d['digest']}", timeout=10)
        assert h.status_code == 200, f"{repo}:{tag} names {d['digest']}, which the registry does not have"
    return True


def _reset_mid_blob(proxy: Proxy) -> Callable[[FakeRequest, int], FakeResponse | None]:
    def fault(req: FakeRequest, n: int) -> FakeResponse | None:
        if req.method == "PATCH" and n == 1:        # half the second chunk arrives, then a reset
            proxy.forward(req, body=req.body[: len(req.body) // 2])
            return FakeResponse(reset=True)
        if req.method == "PUT" and _kind(req.path) == "blobs/uploads" and n == 0:
            return FakeResponse(reset=True)         # the first monolithic upload: reset
        return None
    return fault


def _throttled(req: FakeRequest, n: int) -> FakeResponse | None:
    if n < 2 and req.method in ("HEAD", "POST", "PUT"):
        return FakeResponse(status=429, headers={"Retry-After": "3"}, body=b'{"errors":[{"code":"TOOMANYREQUESTS"}]}')
    return None


def _server_errors(req: FakeRequest, n: int) -> FakeResponse | None:
    if n < 2 and req.method in ("PUT", "PATCH"):
        return FakeResponse(status=500, body=b'{"errors":[{"code":"UNKNOWN","message":"boom"}]}')
    return None


def _wrong_digest(proxy: Proxy) -> Callable[[FakeRequest, int], FakeResponse | None]:
    def fault(req: FakeRequest, n: int) -> FakeResponse | None:
        if req.method in ("PUT", "PATCH") and _kind(req.path) == "blobs/uploads" and req.body:
            flipped = bytes([req.body[0] ^ 0xFF]) + req.body[1:]
            return proxy.forward(req, body=flipped)
        return None
    return fault


def _foreign_location(proxy: Proxy) -> Callable[[FakeRequest, int], FakeResponse | None]:
    def fault(req: FakeRequest, n: int) -> FakeResponse | None:
        if req.method == "POST":
            resp = proxy.forward(req)
            loc = resp.headers.get("Location", "").replace(proxy.origin, "http://127.0.0.2:1")
            return FakeResponse(status=resp.status, headers={**resp.headers, "Location": loc}, body=resp.body)
        return None
    return fault


FAULTS = {
    "reset-mid-blob": (_reset_mid_blob, None),
    "429-retry-after": (lambda proxy: _throttled, None),
    "500s": (lambda proxy: _server_errors, None),
    "location-on-another-origin": (_foreign_location, "leaves the registry origin"),
    "wrong-digest": (_wrong_digest, "DIGEST_INVALID"),
}


@pytest.mark.parametrize("name", sorted(FAULTS))
def test_push_through_faults(name: str, registry: str, tmp_path: Path,
                             fake_http: Callable[..., FakeServer]) -> None:
    make_fault, error = FAULTS[name]
    proxy = Proxy(registry=registry, fault=lambda r, n: None)
    server = fake_http(proxy)
    proxy.origin = server.url
    proxy.fault = make_fault(proxy)
    store, lay, image = stored_image(tmp_path, {"big.bin": os.urandom(200_000), "small": b"s\n"})
    repo = f"faults/{name}"
    sleeps: list[float] = []
    opts = PushOptions(parallel=2, chunk_size=64 << 10)
    if error is None:
        push_image(_client(sleeps), store, image, [Reference.parse(f"{server.host}/{repo}:1")], opts)
        assert _tag_is_whole(registry, repo, "1")
        r = requests.get(f"http://{registry}/v2/{repo}/manifests/1", timeout=10,
                         headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
        assert r.content == lay.manifest.data
    else:
        with pytest.raises(RegistryError, match=error) as ei:
            push_image(_client(sleeps), store, image, [Reference.parse(f"{server.host}/{repo}:1")], opts)
        assert f"{server.host}/{repo}" in str(ei.value)
        assert not _tag_is_whole(registry, repo, "1")
    assert proxy.fired, "the fault was never injected"
    if name == "reset-mid-blob":     # the reset chunked upload was restarted from its start
        chunks = -(-lay.layer.size // opts.chunk_size)
        assert proxy.counts[("PATCH", "blobs/uploads")] > chunks, proxy.counts
        assert proxy.counts[("POST", "blobs/uploads")] >= 3, proxy.counts     # config, layer, layer again
    if name == "429-retry-after":
        assert sleeps and all(s == 3.0 for s in sleeps)           # Retry-After honoured


def test_blob_uploads_run_in_parallel_within_the_bound(registry: str, tmp_path: Path,
                                                      fake_http: Callable[..., FakeServer]) -> None:
    import time
    from dataclasses import replace
    from builder.image.oci import Descriptor
    state = {"now": 0, "max": 0}
    lock = threading.Lock()
    proxy = Proxy(registry=registry, fault=lambda r, n: None)

    def slow_puts(req: FakeRequest, n: int) -> FakeResponse | None:
        if req.method != "PUT" or _kind(req.path) != "blobs/uploads":
            return None
        with lock:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
        try:
            time.sleep(0.2)
            return proxy.forward(req)
        finally:
            with lock:
                state["now"] -= 1

    proxy.fault = slow_puts
    server = fake_http(proxy)
    proxy.origin = server.url
    store, lay, image = stored_image(tmp_path, {"f": b"parallel\n"})
    extra = []
    for i in range(8):
        d, size = store.put_bytes(f"extra blob {i}\n".encode())
        extra.append(Descriptor(media_type="application/octet-stream", digest=d, size=size))
    image = replace(image, blobs=(*image.blobs, *extra))
    push_image(_client([]), store, image, [Reference.parse(f"{server.host}/faults/parallel:1")],
               PushOptions(parallel=3))
    assert 1 < state["max"] <= 3, state
    assert _tag_is_whole(registry, "faults/parallel", "1")
    for d in extra:
        assert requests.head(f"http://{registry}/v2/faults/parallel/blobs/{d.digest}", timeout=10).status_code == 200
