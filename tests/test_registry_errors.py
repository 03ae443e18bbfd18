"""Registry errors carry the HTTP status and distribution error codes; token bodies are capped
streams; credentials stay with their registry's hosts; a bad registry port is a clean error;
PulledImage.chain()."""
from __future__ import annotations

import base64
import dataclasses
import json
from pathlib import Path
from typing import Callable, Iterator

import pytest
import requests

from builder.errors import AuthError, NotFoundError, RegistryError, rebuild
from builder.image.digest import Digest
from builder.image.oci import MediaType, Platform
from builder.image.reference import Reference
from builder.image.view import LayerRef
from builder.registry.auth import Authenticator, Credentials, StaticCredentials, may_send_credentials
from builder.registry.client import RegistryClient
from builder.registry.pull import load_oci_layout
from builder.store.content import ContentStore
from registry_fixture import (FakeRequest, FakeResponse, FakeServer, fake_http,  # noqa: F401  (fixture)
                              free_port, make_oci_layout)

Fake = Callable[..., FakeServer]
AMD64 = Platform(os="linux", architecture="amd64")


def _client(creds: dict[str, Credentials] | None = None) -> RegistryClient:
    s = requests.Session()
    return RegistryClient(s, auth=Authenticator(s, StaticCredentials(creds or {})), sleep=lambda _: None)


def _err(code: str, message: str = "") -> bytes:
    return json.dumps({"errors": [{"code": code, "message": message, "detail": {}}]}).encode()


# ====================================================================== status and codes
def test_errors_carry_status_and_codes(fake_http: Fake) -> None:
    def reg(req: FakeRequest) -> FakeResponse:
        if "/missing/" in req.path:
            return FakeResponse(status=404, body=_err("NAME_UNKNOWN", "repository name not known to registry"))
        if "/secret/" in req.path:
            return FakeResponse(status=403, body=_err("DENIED", "requested access to the resource is denied"))
        if "/broken/" in req.path:
            return FakeResponse(status=500, body=_err("UNKNOWN", "storage exploded"))
        return FakeResponse(status=400, body=_err("MANIFEST_INVALID", "bad"))

    srv = fake_http(reg)
    c = _client()
    with pytest.raises(NotFoundError) as nf:
        c.get_manifest(Reference.parse(f"{srv.host}/missing:1"))
    assert (nf.value.status, nf.value.codes) == (404, ("NAME_UNKNOWN",))
    assert f"{srv.host}/missing:1" in str(nf.value) and "NAME_UNKNOWN" in str(nf.value)
    with pytest.raises(AuthError) as au:
        c.get_manifest(Reference.parse(f"{srv.host}/secret:1"))
    assert (au.value.status, au.value.codes) == (403, ("DENIED",))
    with pytest.raises(RegistryError, match="HTTP 500: UNKNOWN storage exploded") as five:
        c.get_manifest(Reference.parse(f"{srv.host}/broken:1"))
    assert type(five.value) is RegistryError and (five.value.status, five.value.codes) == (500, ("UNKNOWN",))
    with pytest.raises(RegistryError) as bad:
        c.put_manifest(Reference.parse(f"{srv.host}/app:1"), MediaType.OCI_MANIFEST, b"{}")
    assert (bad.value.status, bad.value.codes) == (400, ("MANIFEST_INVALID",))
    again = rebuild("NotFoundError", nf.value.message, None, nf.value.fields())     # crosses a wire intact
    assert isinstance(again, NotFoundError) and again.codes == ("NAME_UNKNOWN",) and again.status == 404


def test_401_without_challenge_and_rejected_credentials(fake_http: Fake) -> None:
    bare = fake_http(lambda req: FakeResponse(status=401, body=_err("UNAUTHORIZED", "authentication required")))
    with pytest.raises(AuthError, match="without WWW-Authenticate: UNAUTHORIZED") as e1:
        _client().get_manifest(Reference.parse(f"{bare.host}/app:1"))
    assert (e1.value.status, e1.value.codes) == (401, ("UNAUTHORIZED",))
    basic = fake_http(lambda req: FakeResponse(status=401, headers={"WWW-Authenticate": 'Basic realm="r"'},
                                               body=_err("UNAUTHORIZED", "bad password")))
    creds = {basic.host: Credentials(username="u", password="wrong")}
    with pytest.raises(AuthError, match="credentials rejected.*UNAUTHORIZED bad password") as e2:
        _client(creds).get_manifest(Reference.parse(f"{basic.host}/app:1"))
    assert (e2.value.status, e2.value.codes) == (401, ("UNAUTHORIZED",))
    assert basic.requests[-1].headers["authorization"] == "Basic " + base64.b64encode(b"u:wrong").decode()


def test_registry_on_a_bad_port_is_a_clean_error() -> None:
    for host in ("127.0.0.1:99999", "127.0.0.1:0"):
        with pytest.raises(RegistryError, match=f"{host}/app:1: invalid URL") as ei:
            _client().get_manifest(Reference.parse(f"{host}/app:1"))
        assert ei.value.status is None
    with pytest.raises(RegistryError, match="after 4 tries"):
        _client().get_manifest(Reference.parse(f"127.0.0.1:{free_port()}/app:1"))


# ====================================================================== token responses
def _endless(counter: list[int]) -> Iterator[bytes]:
    yield b'{"token":"'
    for _ in range(4096):                      # 256 MiB at most
        counter.append(65536)
        yield b"t" * 65536


def test_token_body_is_a_capped_stream(fake_http: Fake) -> None:
    sent: list[int] = []
    endless = fake_http(lambda req: FakeResponse(chunks=_endless(sent)))
    auth = Authenticator(requests.Session())
    with pytest.raises(AuthError, match="token response .* larger than 1048576 bytes"):
        auth.respond("r.io", f'Bearer realm="{endless.url}/token"', "repository:a:pull")
    assert sum(sent) < 64 << 20
    declared = fake_http(lambda req: FakeResponse(headers={"Content-Length": str(1 << 40)}, chunks=iter(())))
    with pytest.raises(AuthError, match="Content-Length 1099511627776"):
        auth.respond("r.io", f'Bearer realm="{declared.url}/token"', "repository:a:pull")


def test_token_endpoint_errors_and_odd_ttls(fake_http: Fake) -> None:
    denied = fake_http(lambda req: FakeResponse(status=401, body=_err("UNAUTHORIZED", "who are you")))
    auth = Authenticator(requests.Session())
    with pytest.raises(AuthError, match="denied .*UNAUTHORIZED who are you") as ei:
        auth.respond("r.io", f'Bearer realm="{denied.url}/t"', "repository:a:pull")
    assert (ei.value.status, ei.value.codes) == (401, ("UNAUTHORIZED",))
    now = [0.0]
    for ttl in ("nan", "1e999", -5, "soon"):
        srv = fake_http(lambda req, ttl=ttl: FakeResponse(body=json.dumps({"token": "T", "expires_in": ttl}).encode()))
        a = Authenticator(requests.Session(), clock=lambda: now[0])
        if ttl == "soon":
            with pytest.raises(AuthError, match="invalid JSON"):
                a.respond("r.io", f'Bearer realm="{srv.url}/t"', "s")
            continue
        assert a.respond("r.io", f'Bearer realm="{srv.url}/t"', "s") == "Bearer T"
        now[0] += 24 * 3600 + 1                     # no token outlives a day, nan never sticks
        assert a.header("r.io", "s") is None


# ====================================================================== credentials and realms
@pytest.mark.parametrize("registry, realm, ok", [
    ("docker.io", "https://auth.docker.io/token", True),
    ("docker.io", "http://auth.docker.io/token", False),
    ("registry.gitlab.com", "https://gitlab.com/jwt/auth", True),
    ("ghcr.io", "https://ghcr.io/token", True),
    ("myreg:5000", "http://myreg:5001/token", True),
    ("127.0.0.1:5000", "http://127.0.0.1:6000/t", True),
    ("127.0.0.1:5000", "http://127.0.0.2:6000/t", False),
    ("docker.io", "https://docker.io.evil.example/token", False),
    ("docker.io", "https://evildocker.io/token", False),
    ("ghcr.io", "https://evil.example/token", False),
    ("registry.example.com", "https://com/token", False),
    ("r.io", "https://[::1/x", False),
])
def test_may_send_credentials(registry: str, realm: str, ok: bool) -> None:
    assert may_send_credentials(registry, realm) is ok


def test_basic_credentials_never_go_to_a_realm_on_another_host(fake_http: Fake) -> None:
    token_srv = fake_http(lambda req: FakeResponse(body=b'{"token":"ANON"}'), host="127.0.0.2")

    def reg(req: FakeRequest) -> FakeResponse:
        if req.headers.get("authorization") != "Bearer ANON":
            return FakeResponse(status=401, headers={"WWW-Authenticate": f'Bearer realm="{token_srv.url}/t"'})
        return FakeResponse(headers={"Content-Type": MediaType.OCI_MANIFEST}, body=b'{"schemaVersion":2}')

    srv = fake_http(reg)
    c = _client({srv.host: Credentials(username="alice", password="s3cret")})
    c.get_manifest(Reference.parse(f"{srv.host}/app:1"))
    assert [r.headers.get("authorization") for r in token_srv.requests] == [None]     # asked anonymously
    refresh = _client({srv.host: Credentials(identity_token="REFRESH")})
    refresh.get_manifest(Reference.parse(f"{srv.host}/app:2"))
    assert all(b"REFRESH" not in r.body and r.method == "GET" for r in token_srv.requests)

    denied = fake_http(lambda req: FakeResponse(status=401), host="127.0.0.2")
    a = Authenticator(requests.Session(), StaticCredentials({srv.host: Credentials(username="u", password="p")}))
    with pytest.raises(AuthError, match="were not sent to 127.0.0.2, which is another host"):
        a.respond(srv.host, f'Bearer realm="{denied.url}/t"', "s")


def test_credentials_go_to_a_realm_on_the_registry_host_but_not_across_its_redirects(fake_http: Fake) -> None:
    elsewhere = fake_http(lambda req: FakeResponse(body=b'{"token":"T"}'), host="127.0.0.2")
    realm = fake_http(lambda req: FakeResponse(status=307, headers={"Location": f"{elsewhere.url}/t"}))
    a = Authenticator(requests.Session(), StaticCredentials({"127.0.0.1:1": Credentials(username="u", password="p")}))
    assert a.respond("127.0.0.1:1", f'Bearer realm="{realm.url}/t",service="s"', "repository:a:pull") == "Bearer T"
    assert realm.requests[0].headers["authorization"] == "Basic " + base64.b64encode(b"u:p").decode()
    assert "authorization" not in elsewhere.requests[0].headers


# ====================================================================== chain
def test_pulled_image_chain(tmp_path: Path) -> None:
    lay = make_oci_layout(tmp_path / "l", {"f": b"x"}, "t")
    img = load_oci_layout(lay.path, "t", AMD64, ContentStore(tmp_path / "store"))
    chain = img.chain()
    assert chain == (LayerRef(descriptor=img.manifest.layers[0], diff_id=Digest.parse(lay.diff_id)),)
    broken = dataclasses.replace(img, config=dataclasses.replace(img.config, diff_ids=()))
    with pytest.raises(RegistryError, match="1 layers but 0 diff_ids"):
        broken.chain()
    with pytest.raises(dataclasses.FrozenInstanceError):
        img.ref = "x"  # type: ignore[misc]


# ====================================================================== keep-alive
def test_connections_are_reused_after_heads_and_errors(registry: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Small answers nobody reads (HEAD, 404s, redirects, upload replies) are drained, not
    dropped with their connection: a series of requests to the real registry needs one socket."""
    import urllib3.connection
    connects: list[int] = []
    real_connect = urllib3.connection.HTTPConnection.connect

    def counting_connect(self: urllib3.connection.HTTPConnection) -> None:
        connects.append(1)
        real_connect(self)

    monkeypatch.setattr(urllib3.connection.HTTPConnection, "connect", counting_connect)
    s = requests.Session()
    c = RegistryClient(s, auth=Authenticator(s), sleep=lambda _: None)
    ref = Reference.parse(f"{registry}/keepalive:1")
    for i in range(5):
        assert not c.blob_exists(ref, Digest.of_bytes(b"%d" % i))
        with pytest.raises(NotFoundError):
            c.get_manifest(ref)
        with c._http.request("GET", f"http://{registry}/v2") as resp:     # 301 with a body, then 200
            assert resp.status_code == 200 and resp.content == b"{}"
    assert len(connects) == 1
