from __future__ import annotations

import base64
import functools
import json
import subprocess
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from builder.registry.auth import (Authenticator, Challenge, Credentials, DockerConfigCredentials, StaticCredentials,
                          docker_config_path, parse_challenges)
from builder.errors import AuthError
from registry_fixture import FakeRequest, FakeResponse, fake_http  # noqa: F401  (fixture)


# ------------------------------------------------------------------ challenge parsing
@pytest.mark.parametrize("header, expected", [
    ('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
     'scope="repository:library/busybox:pull"',
     [("bearer", {"realm": "https://auth.docker.io/token", "service": "registry.docker.io",
                  "scope": "repository:library/busybox:pull"})]),
    ('Bearer realm="https://r/t",scope="repository:a:pull,push"',          # comma inside quotes
     [("bearer", {"realm": "https://r/t", "scope": "repository:a:pull,push"})]),
    ('Basic realm="Registry Realm"', [("basic", {"realm": "Registry Realm"})]),
    ('basic realm=simple', [("basic", {"realm": "simple"})]),
    ('Bearer realm = "https://x/t" , service = "svc"', [("bearer", {"realm": "https://x/t", "service": "svc"})]),
    ('Bearer realm="a\\"b"', [("bearer", {"realm": 'a"b'})]),
    ('Basic realm="r", Bearer realm="https://t",service="s"',
     [("basic", {"realm": "r"}), ("bearer", {"realm": "https://t", "service": "s"})]),
    ('Bearer', [("bearer", {})]),
    ('', []),
])
def test_parse_challenges(header: str, expected: list[tuple[str, dict[str, str]]]) -> None:
    got = parse_challenges(header)
    assert [(c.scheme, dict(c.params)) for c in got] == expected


def test_challenge_properties() -> None:
    (c,) = parse_challenges('Bearer realm="https://t",service="s",scope="repository:x:pull"')
    assert isinstance(c, Challenge)
    assert (c.realm, c.service, c.scope, c.param("missing")) == ("https://t", "s", "repository:x:pull", "")


# ------------------------------------------------------------------ docker config
def _write_config(tmp_path: Path, cfg: dict) -> Path:
    p = tmp_path / "config.json"
    p.write_text(json.dumps(cfg))
    return p


def test_docker_config_path_from_injected_env(tmp_path: Path) -> None:
    assert docker_config_path({"DOCKER_CONFIG": "/cfg", "HOME": "/h"}) == Path("/cfg/config.json")
    assert docker_config_path({"HOME": "/h"}) == Path("/h/.docker/config.json")
    assert docker_config_path({}) is None


def test_auths_base64_and_plain(tmp_path: Path) -> None:
    enc = base64.b64encode(b"alice:s3:cr3t").decode()
    p = _write_config(tmp_path, {"auths": {
        "https://index.docker.io/v1/": {"auth": enc},
        "myreg.example:5000": {"username": "bob", "password": "pw"},
        "https://ghcr.io": {"auth": base64.b64encode(b"carol:tok").decode()},
    }})
    creds = DockerConfigCredentials(p)
    assert creds.get("docker.io") == Credentials(username="alice", password="s3:cr3t")
    assert creds.get("myreg.example:5000") == Credentials(username="bob", password="pw")
    assert creds.get("ghcr.io") == Credentials(username="carol", password="tok")
    assert creds.get("quay.io") is None
    assert "s3:cr3t" not in repr(creds.get("docker.io"))


def test_missing_config_and_bad_auth(tmp_path: Path) -> None:
    assert DockerConfigCredentials(tmp_path / "nope.json").get("docker.io") is None
    assert DockerConfigCredentials(None).get("docker.io") is None
    p = _write_config(tmp_path, {"auths": {"r.io": {"auth": "!!notbase64"}}})
    with pytest.raises(AuthError, match="r.io"):
        DockerConfigCredentials(p).get("r.io")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(AuthError, match="cannot read"):
        DockerConfigCredentials(tmp_path / "broken.json").get("r.io")


@pytest.fixture
def helper_dir(tmp_path: Path) -> Path:
    """A real `docker-credential-fake` helper: logs its stdin, answers for two servers."""
    d = tmp_path / "bin"
    d.mkdir()
    script = d / "docker-credential-fake"
    script.write_text(f"""#!/bin/sh
[ "$1" = get ] || exit 3
read server
echo "$server" >> {d}/calls
case "$server" in
  https://index.docker.io/v1/) echo '{{"ServerURL":"x","Username":"hubuser","Secret":"hubpw"}}' ;;
  tok.example) echo '{{"ServerURL":"x","Username":"<token>","Secret":"refresh"}}' ;;
  boom.example) echo 'kaboom' >&2; exit 2 ;;
  *) echo 'credentials not found in native keychain'; exit 1 ;;
esac
""")
    script.chmod(0o755)
    return d


def test_cred_helpers_and_store(tmp_path: Path, helper_dir: Path) -> None:
    run = functools.partial(subprocess.run, env={"PATH": f"{helper_dir}:/usr/bin:/bin"})
    p = _write_config(tmp_path, {"credHelpers": {"tok.example": "fake", "boom.example": "fake"},
                                 "credsStore": "fake",
                                 "auths": {"plain.example": {"username": "u", "password": "p"}}})
    creds = DockerConfigCredentials(p, runner=run)
    assert creds.get("docker.io") == Credentials(username="hubuser", password="hubpw")   # via credsStore
    assert creds.get("tok.example") == Credentials(identity_token="refresh")
    assert creds.get("plain.example") == Credentials(username="u", password="p")          # auths before store
    assert creds.get("other.example") is None                                              # not found → None
    with pytest.raises(AuthError, match="exit 2"):
        creds.get("boom.example")
    calls = (helper_dir / "calls").read_text().split()
    assert calls == ["https://index.docker.io/v1/", "tok.example", "other.example", "boom.example"]


def test_helper_name_is_validated(tmp_path: Path) -> None:
    p = _write_config(tmp_path, {"credsStore": "x; rm -rf /"})
    with pytest.raises(AuthError, match="invalid credential helper"):
        DockerConfigCredentials(p).get("r.io")


# ------------------------------------------------------------------ authenticator
REG = "127.0.0.1:9"      # a registry on the token servers' host: credentials may go to their realm


def _token_server(fake_http):
    def handle(req: FakeRequest) -> FakeResponse:
        if req.headers.get("authorization") not in (None, "Basic " + base64.b64encode(b"u:p").decode()):
            return FakeResponse(status=401)
        n = len(srv.requests)
        return FakeResponse(body=json.dumps({"access_token" if n % 2 else "token": f"tok{n}",
                                             "expires_in": 300}).encode())
    srv = fake_http(handle)
    return srv


def test_bearer_token_fetch_and_cache(fake_http) -> None:
    srv = _token_server(fake_http)
    now = [1000.0]
    auth = Authenticator(requests.Session(), StaticCredentials({REG: Credentials(username="u", password="p")}),
                         clock=lambda: now[0])
    ch = f'Bearer realm="{srv.url}/token",service="svc",scope="repository:a:pull"'
    assert auth.header(REG, "repository:a:pull") is None
    assert auth.respond(REG, ch, "repository:a:pull") == "Bearer tok1"
    assert auth.header(REG, "repository:a:pull") == "Bearer tok1"       # cached per scope
    assert auth.header(REG, "repository:b:pull") is None
    assert auth.respond(REG, ch, "repository:a:pull repository:c:pull") == "Bearer tok2"   # access_token
    q = parse_qs(urlsplit(srv.requests[1].path).query)
    assert q == {"service": ["svc"], "scope": ["repository:a:pull", "repository:c:pull"]}
    assert srv.requests[0].headers["authorization"].startswith("Basic ")
    now[0] += 291                                                            # expires_in 300 minus slack
    assert auth.header(REG, "repository:a:pull") is None


def test_bearer_denied_and_basic(fake_http) -> None:
    srv = _token_server(fake_http)
    auth = Authenticator(requests.Session(), StaticCredentials({REG: Credentials(username="u", password="bad")}))
    with pytest.raises(AuthError, match="denied"):
        auth.respond(REG, f'Bearer realm="{srv.url}/token"', "repository:a:pull")
    with pytest.raises(AuthError, match="no credentials"):
        auth.respond("other.io", 'Basic realm="x"', "repository:a:pull")
    assert auth.respond(REG, 'Basic realm="x"', "s") == "Basic " + base64.b64encode(b"u:bad").decode()
    assert auth.header(REG, "any-scope") is not None
    with pytest.raises(AuthError, match="unsupported"):
        auth.respond(REG, 'Negotiate abc', "s")


def test_authenticator_reads_injected_config_path(fake_http, tmp_path: Path) -> None:
    srv = _token_server(fake_http)
    p = _write_config(tmp_path, {"auths": {REG: {"auth": base64.b64encode(b"u:p").decode()}}})
    auth = Authenticator(requests.Session(), config_path=p)
    assert auth.respond(REG, f'Bearer realm="{srv.url}/token"', "s") == "Bearer tok1"
    assert srv.requests[0].headers["authorization"] == "Basic " + base64.b64encode(b"u:p").decode()
