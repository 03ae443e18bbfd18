"""Registry client and pull: a real docker-registry for the happy paths, a fault-injecting local
HTTP server for auth, retries, wrong digests and hostile redirects."""
from __future__ import annotations

import hashlib
import io
import json
import subprocess
from pathlib import Path
from typing import Callable

import pytest
import requests

from builder.registry.auth import Authenticator
from builder.image.digest import Digest
from builder.errors import AuthError, DigestMismatchError, NotFoundError, RegistryError, StoreError
from builder.image.oci import Descriptor, MediaType, Platform
from builder.registry.pull import PulledImage, load_from_store, load_oci_layout, pull_image
from builder.image.reference import Reference
from builder.registry.client import RegistryClient
from builder.store.content import ContentStore
from registry_fixture import (FakeRequest, FakeResponse, FakeServer, fake_http,  # noqa: F401  (fixture)
                              free_port, make_oci_index_layout, make_oci_layout, skopeo_copy)

# `registry` (session) comes from tests/conftest.py, which imports it from registry_fixture.

AMD64 = Platform(os="linux", architecture="amd64")
ARM64 = Platform(os="linux", architecture="arm64", variant="v8")


def _client(sleeps: list[float] | None = None, **kw: object) -> RegistryClient:
    """A client whose sleeps are recorded, not slept; backoff jitter pinned to its maximum."""
    s = requests.Session()
    rec = sleeps if sleeps is not None else []
    kw.setdefault("jitter", lambda: 1.0)
    return RegistryClient(s, auth=Authenticator(s), sleep=rec.append, **kw)  # type: ignore[arg-type]


def _validate(store: ContentStore, img: PulledImage) -> None:
    """Recompute every digest and size of a pulled image from the store."""
    for d in (img.manifest_descriptor, img.manifest.config, *img.manifest.layers):
        data = store.path(d.digest).read_bytes()
        assert len(data) == d.size and Digest.of_bytes(data) == d.digest


# ====================================================================== real registry
def test_pull_single_image_from_real_registry(registry: str, tmp_path: Path) -> None:
    lay = make_oci_layout(tmp_path / "lay", {"hello.txt": b"hi\n", "etc/os": b"pybuild\n"}, "v1")
    skopeo_copy(f"oci:{lay.path}:v1", f"docker://{registry}/single:v1")
    client = _client()
    ref = Reference.parse(f"{registry}/single:v1")
    desc, raw = client.get_manifest(ref)
    assert desc.media_type == MediaType.OCI_MANIFEST
    assert str(desc.digest) == lay.manifest.digest and raw == lay.manifest.data

    store = ContentStore(tmp_path / "store")
    img = pull_image(client, store, ref, AMD64)
    assert str(img.manifest_descriptor.digest) == lay.manifest.digest
    assert img.config.platform == AMD64 and img.config.config.cmd == ("/bin/sh",)
    assert [str(d) for d in img.config.diff_ids] == [lay.diff_id]
    assert store.path(img.manifest.layers[0].digest).read_bytes() == lay.layer.data
    assert img.raw_config == lay.config.data
    _validate(store, img)

    again = load_from_store(store, img.manifest_descriptor, ref=img.ref)
    assert again == img
    # pulling again fetches nothing new: every blob is already present
    mtimes = {p: p.stat().st_mtime_ns for p in (store.root / "blobs" / "sha256").iterdir()}
    pull_image(client, store, ref.with_digest(desc.digest), AMD64)
    assert {p: p.stat().st_mtime_ns for p in (store.root / "blobs" / "sha256").iterdir()} == mtimes


def test_pull_platform_from_index(registry: str, tmp_path: Path) -> None:
    lay = make_oci_index_layout(tmp_path / "multi", {"linux/amd64": {"arch": b"amd64\n"},
                                                     "linux/arm64/v8": {"arch": b"arm64\n"}}, "multi")
    skopeo_copy(f"oci:{lay.path}:multi", f"docker://{registry}/multi:1", all_images=True)
    client = _client()
    ref = Reference.parse(f"{registry}/multi:1")
    top, _ = client.get_manifest(ref)
    assert top.media_type == MediaType.OCI_INDEX

    for plat, want in ((AMD64, lay.images["linux/amd64"]), (ARM64, lay.images["linux/arm64/v8"]),
                       (Platform(os="linux", architecture="arm64"), lay.images["linux/arm64/v8"])):
        desc, man = client.resolve(ref, plat)
        assert str(desc.digest) == want.manifest.digest and desc.platform is not None
        assert [str(l.digest) for l in man.layers] == [want.layer.digest]

    store = ContentStore(tmp_path / "store")
    img = pull_image(client, store, ref, ARM64)
    assert img.config.platform == ARM64
    assert store.path(img.manifest.layers[0].digest).read_bytes() == lay.images["linux/arm64/v8"].layer.data
    _validate(store, img)
    with pytest.raises(NotFoundError, match="s390x"):
        client.resolve(ref, Platform(os="linux", architecture="s390x"))


def test_not_found_errors(registry: str) -> None:
    client = _client()
    with pytest.raises(NotFoundError, match=rf"{registry}/nothing-here:latest.*HTTP 404"):
        client.get_manifest(Reference.parse(f"{registry}/nothing-here"))
    bogus = Descriptor(media_type=MediaType.OCI_LAYER, digest=Digest.of_bytes(b"nope"), size=4)
    with pytest.raises(NotFoundError, match="404"):
        client.fetch_blob(Reference.parse(f"{registry}/nothing-here"), bogus, io.BytesIO())


def test_push_roundtrip_and_mount(registry: str, tmp_path: Path) -> None:
    lay = make_oci_layout(tmp_path / "src", {"pushed": b"by pybuild\n"}, "p")
    client = _client()
    ref = Reference.parse(f"{registry}/pushed:t")
    blobs = [lay.layer, lay.config]
    for b in blobs:
        d = Descriptor(media_type=b.media_type, digest=Digest.parse(b.digest), size=b.size)
        assert not client.blob_exists(ref, d.digest)
        assert client.upload_blob(ref, d, lambda b=b: io.BytesIO(b.data)) == "uploaded"
        assert client.blob_exists(ref, d.digest)
        assert client.upload_blob(ref, d, lambda: io.BytesIO(b"never read")) == "exists"
    desc = client.put_manifest(ref, MediaType.OCI_MANIFEST, lay.manifest.data)
    assert str(desc.digest) == lay.manifest.digest
    out = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{registry}/pushed:t"],
                         check=True, capture_output=True, timeout=30).stdout
    assert out == lay.manifest.data

    other = Reference.parse(f"{registry}/mounted:t")
    layer = Descriptor(media_type=lay.layer.media_type, digest=Digest.parse(lay.layer.digest), size=lay.layer.size)
    assert client.upload_blob(other, layer, lambda: io.BytesIO(b"unused"), mount_from=ref) == "mounted"
    assert client.blob_exists(other, layer.digest)


def test_load_oci_layout(tmp_path: Path) -> None:
    lay = make_oci_index_layout(tmp_path / "multi", {"linux/amd64": {"a": b"1"}, "linux/arm64/v8": {"a": b"2"}}, "m")
    single = make_oci_layout(tmp_path / "multi", {"s": b"single"}, "s")
    store = ContentStore(tmp_path / "store")
    img = load_oci_layout(lay.path, "m", ARM64, store)
    assert str(img.manifest_descriptor.digest) == lay.images["linux/arm64/v8"].manifest.digest
    assert img.config.platform == ARM64
    _validate(store, img)
    img2 = load_oci_layout(lay.path, "s", AMD64, store)
    assert str(img2.manifest_descriptor.digest) == single.manifest.digest
    with pytest.raises(StoreError, match="tag not found.*m, s"):
        load_oci_layout(lay.path, "nope", AMD64, store)
    with pytest.raises(StoreError, match="no manifest for platform"):
        load_oci_layout(lay.path, "m", Platform(os="windows", architecture="amd64"), store)
    # a corrupted layer blob in the layout is refused and not imported
    other = ContentStore(tmp_path / "store2")
    blob = lay.path / "blobs" / "sha256" / lay.images["linux/amd64"].layer.digest.split(":")[1]
    blob.write_bytes(b"tampered")
    with pytest.raises((StoreError, DigestMismatchError)):
        load_oci_layout(lay.path, "m", AMD64, other)
    assert not other.has(Digest.parse(lay.images["linux/amd64"].layer.digest))


# ====================================================================== fault injection
_LAYER = b"layer-bytes" * 100
_LAYER_D = "sha256:" + hashlib.sha256(_LAYER).hexdigest()
_LAYER_DESC = Descriptor(media_type=MediaType.OCI_LAYER, digest=Digest.parse(_LAYER_D), size=len(_LAYER))


def _manifest_bytes() -> bytes:
    cfg = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
    return json.dumps({"schemaVersion": 2, "mediaType": MediaType.OCI_MANIFEST,
                       "config": {"mediaType": MediaType.OCI_CONFIG, "digest": str(Digest.of_bytes(cfg)),
                                  "size": len(cfg)}, "layers": []}).encode()


def _ok_manifest() -> FakeResponse:
    return FakeResponse(headers={"Content-Type": MediaType.OCI_MANIFEST}, body=_manifest_bytes())


def test_bearer_flow(fake_http: Callable[..., FakeServer]) -> None:
    token_srv = fake_http(lambda req: FakeResponse(body=b'{"token":"T0K"}'))

    def reg(req: FakeRequest) -> FakeResponse:
        if req.headers.get("authorization") != "Bearer T0K":
            return FakeResponse(status=401, headers={"WWW-Authenticate":
                f'Bearer realm="{token_srv.url}/token",service="fake",scope="repository:app:pull"'})
        return _ok_manifest()

    srv = fake_http(reg)
    client = _client()
    ref = Reference.parse(f"{srv.host}/app:1")
    desc, raw = client.get_manifest(ref)
    assert raw == _manifest_bytes() and desc.digest == Digest.of_bytes(raw)
    assert [r.headers.get("authorization") for r in srv.requests] == [None, "Bearer T0K"]
    assert token_srv.requests[0].path == "/token?service=fake&scope=repository%3Aapp%3Apull"
    client.get_manifest(ref)                           # token cached: one request, no new token
    assert len(srv.requests) == 3 and len(token_srv.requests) == 1


def test_auth_rejected(fake_http: Callable[..., FakeServer]) -> None:
    token_srv = fake_http(lambda req: FakeResponse(body=b'{"token":"useless"}'))
    srv = fake_http(lambda req: FakeResponse(status=401, headers={
        "WWW-Authenticate": f'Bearer realm="{token_srv.url}/t",service="s"'}))
    with pytest.raises(AuthError, match=r"/app:1.*401"):
        _client().get_manifest(Reference.parse(f"{srv.host}/app:1"))
    forbidden = fake_http(lambda req: FakeResponse(status=403, body=b'{"errors":[{"code":"DENIED","message":"no"}]}'))
    with pytest.raises(AuthError, match="HTTP 403: DENIED no"):
        _client().get_manifest(Reference.parse(f"{forbidden.host}/app:1"))


def test_429_retry_after_then_success(fake_http: Callable[..., FakeServer]) -> None:
    calls = []

    def reg(req: FakeRequest) -> FakeResponse:
        calls.append(req)
        if len(calls) == 1:
            return FakeResponse(status=429, headers={"Retry-After": "2"})
        if len(calls) == 2:
            return FakeResponse(status=503, headers={"Retry-After": "Thu, 01 Jan 1970 00:00:00 GMT"})
        return _ok_manifest()

    srv = fake_http(reg)
    sleeps: list[float] = []
    _client(sleeps).get_manifest(Reference.parse(f"{srv.host}/app:1"))
    assert sleeps == [2.0, 0.0] and len(calls) == 3


def test_500s_give_up_after_four_tries(fake_http: Callable[..., FakeServer]) -> None:
    srv = fake_http(lambda req: FakeResponse(status=500))
    sleeps: list[float] = []
    with pytest.raises(RegistryError, match=r"/app:1: manifest: HTTP 500") as ei:
        _client(sleeps).get_manifest(Reference.parse(f"{srv.host}/app:1"))
    assert type(ei.value) is RegistryError
    assert len(srv.requests) == 4 and sleeps == [0.5, 1.0, 2.0]
    huge = fake_http(lambda req: FakeResponse(status=429, headers={"Retry-After": "99999"}))
    sleeps.clear()
    with pytest.raises(RegistryError, match="429"):
        _client(sleeps).get_manifest(Reference.parse(f"{huge.host}/app:1"))
    assert sleeps == [60.0] * 3                        # Retry-After is capped


def test_connection_refused_retries_then_fails() -> None:
    sleeps: list[float] = []
    with pytest.raises(RegistryError, match="after 4 tries"):
        _client(sleeps).get_manifest(Reference.parse(f"127.0.0.1:{free_port()}/app:1"))
    assert len(sleeps) == 3


def test_blob_wrong_digest(fake_http: Callable[..., FakeServer], tmp_path: Path) -> None:
    srv = fake_http(lambda req: FakeResponse(body=b"X" + _LAYER[1:]))
    with pytest.raises(DigestMismatchError, match=f"app@{_LAYER_D}.*expected {_LAYER_D}"):
        _client().fetch_blob(Reference.parse(f"{srv.host}/app:1"), _LAYER_DESC, io.BytesIO())
    store = ContentStore(tmp_path / "store")
    with pytest.raises(DigestMismatchError, match=_LAYER_D):
        with store.writer(_LAYER_DESC.digest, _LAYER_DESC.size) as w:
            _client().fetch_blob(Reference.parse(f"{srv.host}/app:1"), _LAYER_DESC, w)
            w.commit()
    assert not store.has(_LAYER_DESC.digest)
    long = fake_http(lambda req: FakeResponse(body=_LAYER + b"extra"))
    with pytest.raises(DigestMismatchError, match="more than"):
        _client().fetch_blob(Reference.parse(f"{long.host}/app:1"), _LAYER_DESC, io.BytesIO())


def test_manifest_digest_and_size_checks(fake_http: Callable[..., FakeServer]) -> None:
    lying = fake_http(lambda req: FakeResponse(headers={"Content-Type": MediaType.OCI_MANIFEST,
                                                        "Docker-Content-Digest": _LAYER_D}, body=_manifest_bytes()))
    with pytest.raises(DigestMismatchError):
        _client().get_manifest(Reference.parse(f"{lying.host}/app:1"))
    pinned = Reference.parse(f"{lying.host}/app@{_LAYER_D}")
    with pytest.raises(DigestMismatchError):
        _client().get_manifest(pinned)
    big = fake_http(lambda req: FakeResponse(headers={"Content-Type": MediaType.OCI_MANIFEST},
                                             body=b" " * ((4 << 20) + 1)))
    with pytest.raises(RegistryError, match="larger than"):
        _client().get_manifest(Reference.parse(f"{big.host}/app:1"))


def test_redirect_to_other_origin_drops_authorization(fake_http: Callable[..., FakeServer]) -> None:
    storage = fake_http(lambda req: FakeResponse(body=_LAYER))
    token_srv = fake_http(lambda req: FakeResponse(body=b'{"token":"SECRET"}'))

    def reg(req: FakeRequest) -> FakeResponse:
        if req.headers.get("authorization") != "Bearer SECRET":
            return FakeResponse(status=401, headers={"WWW-Authenticate": f'Bearer realm="{token_srv.url}/t"'})
        if req.path.startswith("/v2/app/blobs/"):
            return FakeResponse(status=307, headers={"Location": f"{storage.url}/bucket/blob?sig=1"})
        return FakeResponse(status=302, headers={"Location": "/v2/app/blobs/" + _LAYER_D})   # same origin

    srv = fake_http(reg)
    out = io.BytesIO()
    _client().fetch_blob(Reference.parse(f"{srv.host}/app:1"), _LAYER_DESC, out)
    assert out.getvalue() == _LAYER
    assert [r.path for r in storage.requests] == ["/bucket/blob?sig=1"]
    assert "authorization" not in storage.requests[0].headers
    assert srv.requests[-1].headers["authorization"] == "Bearer SECRET"     # same-origin hop keeps it


def test_upload_location_must_stay_on_origin(fake_http: Callable[..., FakeServer]) -> None:
    elsewhere = fake_http(lambda req: FakeResponse(status=201))

    def reg(req: FakeRequest) -> FakeResponse:
        if req.method == "HEAD":
            return FakeResponse(status=404)
        return FakeResponse(status=202, headers={"Location": f"{elsewhere.url}/upload/1"})

    srv = fake_http(reg)
    with pytest.raises(RegistryError, match="leaves the registry origin"):
        _client().upload_blob(Reference.parse(f"{srv.host}/app:1"), _LAYER_DESC, lambda: io.BytesIO(_LAYER))
    assert elsewhere.requests == []


def test_upload_relative_location_and_retry_reopens_body(fake_http: Callable[..., FakeServer]) -> None:
    puts: list[bytes] = []

    def reg(req: FakeRequest) -> FakeResponse:
        if req.method == "HEAD":
            return FakeResponse(status=404)
        if req.method == "POST":
            return FakeResponse(status=202, headers={"Location": "/v2/app/blobs/uploads/u1?state=x"})
        puts.append(req.body)
        assert req.path == f"/v2/app/blobs/uploads/u1?state=x&digest={_LAYER_D.replace(':', '%3A')}"
        return FakeResponse(status=503 if len(puts) == 1 else 201)

    srv = fake_http(reg)
    opened: list[int] = []

    def open_fn() -> io.BytesIO:
        opened.append(1)
        return io.BytesIO(_LAYER)

    assert _client().upload_blob(Reference.parse(f"{srv.host}/app:1"), _LAYER_DESC, open_fn) == "uploaded"
    assert puts == [_LAYER, _LAYER] and len(opened) == 2


def test_scheme_selection() -> None:
    c = _client(insecure_hosts=("myreg:5000", "plainhost"))
    cases = {"localhost:5000/a": "http", "127.0.0.2/a": "http", "[::1]:5000/a": "http",
             "myreg:5000/a": "http", "plainhost:1234/a": "http", "ghcr.io/a": "https", "busybox": "https",
             "10.0.0.1:5000/a": "https"}
    assert {t: c.scheme(Reference.parse(t)) for t in cases} == cases
    assert c.base_url(Reference.parse("busybox")) == "https://registry-1.docker.io"


def test_docker_list_without_content_type_and_schema1(fake_http: Callable[..., FakeServer],
                                                     tmp_path: Path) -> None:
    amd, arm = _manifest_bytes(), _manifest_bytes().replace(b'"layers"', b'"annotations":{"a":"b"},"layers"')
    lst = json.dumps({"schemaVersion": 2, "mediaType": MediaType.DOCKER_LIST, "manifests": [
        {"mediaType": MediaType.DOCKER_MANIFEST, "digest": str(Digest.of_bytes(amd)), "size": len(amd),
         "platform": {"os": "linux", "architecture": "amd64"}},
        {"mediaType": MediaType.DOCKER_MANIFEST, "digest": str(Digest.of_bytes(arm)), "size": len(arm),
         "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}}]}).encode()
    by_ident = {"/v2/app/manifests/1": (lst, ""),
                f"/v2/app/manifests/{Digest.of_bytes(amd)}": (amd, MediaType.DOCKER_MANIFEST),
                f"/v2/app/manifests/{Digest.of_bytes(arm)}": (arm, MediaType.DOCKER_MANIFEST),
                "/v2/app/manifests/old": (b'{"schemaVersion":1,"name":"app"}', "application/json")}

    def reg(req: FakeRequest) -> FakeResponse:
        if req.path not in by_ident:
            return FakeResponse(status=404, body=b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"gone"}]}')
        body, ct = by_ident[req.path]
        assert MediaType.DOCKER_LIST in req.headers["accept"] and MediaType.OCI_MANIFEST in req.headers["accept"]
        return FakeResponse(headers={"Content-Type": ct} if ct else {}, body=body)

    srv = fake_http(reg)
    client = _client()
    top, _ = client.get_manifest(Reference.parse(f"{srv.host}/app:1"))
    assert top.media_type == MediaType.DOCKER_LIST
    desc, man = client.resolve(Reference.parse(f"{srv.host}/app:1"), ARM64)
    assert desc.digest == Digest.of_bytes(arm) and desc.media_type == MediaType.DOCKER_MANIFEST
    assert man.annotations == (("a", "b"),)
    with pytest.raises(RegistryError, match="schema 1"):
        client.get_manifest(Reference.parse(f"{srv.host}/app:old"))
    with pytest.raises(NotFoundError, match="MANIFEST_UNKNOWN gone"):
        client.get_manifest(Reference.parse(f"{srv.host}/app:missing"))
    # pull: config blob is 404 on this fake → NotFoundError, and nothing half-written is left behind
    store = ContentStore(tmp_path / "store")
    with pytest.raises(NotFoundError):
        pull_image(client, store, Reference.parse(f"{srv.host}/app:1"), AMD64)
    assert list(store.ingest_dir.iterdir()) == []


def test_load_from_store_missing_layer(tmp_path: Path) -> None:
    lay = make_oci_layout(tmp_path / "l", {"f": b"x"}, "t")
    store = ContentStore(tmp_path / "store")
    img = load_oci_layout(lay.path, "t", AMD64, store)
    store.delete(img.manifest.layers[0].digest)
    with pytest.raises(StoreError, match="not in the store"):
        load_from_store(store, img.manifest_descriptor)
