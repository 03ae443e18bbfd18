"""Auth for push and `pybuild login` / `logout`: a real docker-registry with htpasswd basic auth,
and one with bearer token auth served by a small token server in the test (RS256 tokens signed
with the openssl CLI, the certificate in the token's x5c header)."""
from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import time
import uuid
import warnings
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from builder.errors import AuthError
from builder.image.reference import Reference
from builder.registry.auth import Authenticator, Credentials, StaticCredentials
from builder.registry.client import RegistryClient
from builder.registry.credentials import DockerConfigCredentials, DockerConfigWriter
from builder.registry.push import push_image
from conftest import make_context
from registry_fixture import FakeRequest, FakeResponse, FakeServer, fake_http, run_registry  # noqa: F401
from test_push import manifest_digest, stored_image

USER, PASSWORD = "ci", "s3cret-pw"


def _bcrypt(password: str) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt
        return crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH))


@pytest.fixture(scope="module")
def basic_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """docker-registry with htpasswd auth: USER / PASSWORD."""
    base = tmp_path_factory.mktemp("basic-registry")
    (base / "htpasswd").write_text(f"{USER}:{_bcrypt(PASSWORD)}\n")
    with run_registry(base, f"  htpasswd:\n    realm: pybuild-test\n    path: {base / 'htpasswd'}\n") as addr:
        yield addr


def _client(creds: dict[str, Credentials] | None = None) -> RegistryClient:
    s = requests.Session()
    return RegistryClient(s, auth=Authenticator(s, StaticCredentials(creds or {})), sleep=lambda _: None)


# ---------------------------------------------------------------------- basic auth
def test_push_with_basic_auth(basic_registry: str, tmp_path: Path) -> None:
    store, lay, image = stored_image(tmp_path, {"f": b"basic\n"})
    ref = Reference.parse(f"{basic_registry}/basic/img:1")
    with pytest.raises(AuthError, match=rf"{basic_registry}/basic/img: .*no credentials.*UNAUTHORIZED"):
        push_image(_client(), store, image, [ref])
    wrong = {basic_registry: Credentials(username=USER, password="nope")}
    with pytest.raises(AuthError, match="UNAUTHORIZED"):
        push_image(_client(wrong), store, image, [ref])
    push_image(_client({basic_registry: Credentials(username=USER, password=PASSWORD)}), store, image, [ref])
    out = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"--creds={USER}:{PASSWORD}",
                          f"docker://{ref}"], check=True, capture_output=True, timeout=60).stdout
    assert out == lay.manifest.data


def test_login_logout_cli_writes_docker_config(pybuild, workdir: Path, basic_registry: str, base_image: str) -> None:
    cfg_dir = workdir / "dockercfg"
    env = {"DOCKER_CONFIG": str(cfg_dir)}
    bad = _pybuild_stdin(pybuild, ["login", basic_registry, "-u", USER, "--password-stdin"], "wrong\n", env)
    assert bad.returncode == 1 and basic_registry in bad.stderr and "401" in bad.stderr, bad.stderr
    assert not (cfg_dir / "config.json").exists()
    ok = _pybuild_stdin(pybuild, ["login", basic_registry, "-u", USER, "--password-stdin"], PASSWORD + "\n", env)
    assert ok.returncode == 0 and b"Login Succeeded" in ok.stdout, ok.stderr
    cfg = json.loads((cfg_dir / "config.json").read_text())
    assert cfg["auths"][basic_registry]["auth"] == base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    assert stat.S_IMODE((cfg_dir / "config.json").stat().st_mode) == 0o600
    ctx = make_context(workdir / "ctx", {"Dockerfile": f"FROM {base_image}\nCOPY a /a\n", "a": "a\n"})
    pushed = pybuild("build", str(ctx), "-t", f"{basic_registry}/cli/login:1", "--push", env=env)
    assert pushed.returncode == 0, pushed.stderr
    assert pushed.stdout.decode().strip() == _digest_with_creds(f"{basic_registry}/cli/login:1")
    out = pybuild("logout", basic_registry, env=env)
    assert out.returncode == 0 and basic_registry not in json.loads((cfg_dir / "config.json").read_text())["auths"]
    denied = pybuild("build", str(ctx), "-t", f"{basic_registry}/cli/login:2", "--push", env=env)
    assert denied.returncode == 1 and f"{basic_registry}/cli/login" in denied.stderr, denied.stderr
    assert "UNAUTHORIZED" in denied.stderr or "basic auth" in denied.stderr


def _digest_with_creds(ref: str) -> str:
    from builder.image.digest import Digest
    raw = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"--creds={USER}:{PASSWORD}",
                          f"docker://{ref}"], check=True, capture_output=True, timeout=60).stdout
    return str(Digest.of_bytes(raw))


def _pybuild_stdin(pybuild, args: list[str], stdin: str, env: dict[str, str]):  # type: ignore[no-untyped-def]
    """The pybuild fixture with `stdin` on standard input (through a shell redirect from a file)."""
    from conftest import Run, pybuild_cmd
    e = {**os.environ, "HOME": "/tmp", **env}
    p = subprocess.run(pybuild_cmd() + args, input=stdin.encode(), capture_output=True, env=e, timeout=120, cwd="/tmp")
    return Run(p.returncode, p.stdout, p.stderr.decode(errors="replace"))


# ---------------------------------------------------------------------- credential store
HELPER = """#!/usr/bin/env python3
import json, os, sys
db = os.environ["PB_HELPER_DB"]
data = json.load(open(db)) if os.path.exists(db) else {}
action = sys.argv[1]
if action == "store":
    req = json.load(sys.stdin)
    data[req["ServerURL"]] = [req["Username"], req["Secret"]]
elif action == "get":
    url = sys.stdin.read().strip()
    if url not in data:
        print("credentials not found in native keychain"); sys.exit(1)
    print(json.dumps({"ServerURL": url, "Username": data[url][0], "Secret": data[url][1]}))
elif action == "erase":
    url = sys.stdin.read().strip()
    if url not in data:
        print("credentials not found in native keychain"); sys.exit(1)
    del data[url]
json.dump(data, open(db, "w"))
"""


def test_login_through_the_configured_credential_store(tmp_path: Path, basic_registry: str,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    helper = bindir / "docker-credential-pbtest"
    helper.write_text(HELPER)
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    monkeypatch.setenv("PB_HELPER_DB", str(tmp_path / "db.json"))
    cfg = tmp_path / "docker" / "config.json"
    cfg.parent.mkdir()
    cfg.write_text(json.dumps({"credsStore": "pbtest", "psFormat": "keep me"}))
    from builder.registry.login import login, logout
    login(cfg, basic_registry, USER, PASSWORD)
    doc = json.loads(cfg.read_text())
    assert doc["auths"] == {basic_registry: {}} and doc["psFormat"] == "keep me"
    assert json.loads((tmp_path / "db.json").read_text()) == {basic_registry: [USER, PASSWORD]}
    assert DockerConfigCredentials(cfg).get(basic_registry) == Credentials(username=USER, password=PASSWORD)
    assert logout(cfg, basic_registry)
    assert json.loads((tmp_path / "db.json").read_text()) == {}
    assert json.loads(cfg.read_text())["auths"] == {}
    assert DockerConfigCredentials(cfg).get(basic_registry) is None


def test_docker_hub_login_key(tmp_path: Path) -> None:
    cfg = tmp_path / "config.json"
    DockerConfigWriter(cfg).login("docker.io", Credentials(username="u", password="p"))
    assert list(json.loads(cfg.read_text())["auths"]) == ["https://index.docker.io/v1/"]
    assert DockerConfigCredentials(cfg).get("docker.io") == Credentials(username="u", password="p")
    from builder.registry.login import normalize_registry
    assert normalize_registry("index.docker.io") == "docker.io"
    assert normalize_registry("https://index.docker.io/v1/") == "docker.io"
    assert normalize_registry("127.0.0.1:5000") == "127.0.0.1:5000"


# ---------------------------------------------------------------------- bearer tokens
def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenIssuer:
    """Signs registry tokens (RS256 over the openssl CLI) granting what was asked."""

    def __init__(self, dir: Path) -> None:
        self.key, self.cert = dir / "token.key", dir / "token.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(self.key),
                        "-out", str(self.cert), "-days", "1", "-subj", "/CN=pybuild-token"],
                       check=True, capture_output=True, timeout=60)
        der = subprocess.run(["openssl", "x509", "-in", str(self.cert), "-outform", "DER"], check=True,
                             capture_output=True, timeout=60).stdout
        self.x5c = base64.b64encode(der).decode()

    def token(self, scopes: list[str]) -> str:
        access = []
        for sc in scopes:
            typ, name, actions = sc.split(":", 2) if sc.count(":") >= 2 else ("", "", "")
            access.append({"type": typ, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self.x5c]}
        claims = {"iss": "pybuild-issuer", "sub": USER, "aud": "pybuild-registry", "exp": now + 600,
                  "nbf": now - 10, "iat": now, "jti": uuid.uuid4().hex, "access": access}
        signing = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
        sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(self.key)], input=signing.encode(),
                             check=True, capture_output=True, timeout=60).stdout
        return f"{signing}.{_b64(sig)}"


def test_push_with_bearer_token_scopes(tmp_path: Path, fake_http: Callable[..., FakeServer]) -> None:
    issuer = TokenIssuer(tmp_path)
    asked: list[list[str]] = []
    good = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()

    def token_endpoint(req: FakeRequest) -> FakeResponse:
        if req.headers.get("authorization") != good:
            return FakeResponse(status=401, body=b'{"errors":[{"code":"UNAUTHORIZED","message":"bad login"}]}')
        scopes = parse_qs(urlsplit(req.path).query).get("scope", [])
        asked.append(scopes)
        return FakeResponse(body=json.dumps({"token": issuer.token(scopes), "expires_in": 300}).encode(),
                            headers={"Content-Type": "application/json"})

    server = fake_http(token_endpoint)
    base = tmp_path / "reg"
    base.mkdir()
    auth = (f"  token:\n    realm: {server.url}/token\n    service: pybuild-registry\n"
            f"    issuer: pybuild-issuer\n    rootcertbundle: {issuer.cert}\n")
    store, lay, image = stored_image(tmp_path, {"f": b"bearer\n"})
    with run_registry(base, auth) as addr:
        with pytest.raises(AuthError, match="token request.*denied"):
            push_image(_client({addr: Credentials(username=USER, password="nope")}), store, image,
                       [Reference.parse(f"{addr}/tok/one:1")])
        client = _client({addr: Credentials(username=USER, password=PASSWORD)})
        asked.clear()
        push_image(client, store, image, [Reference.parse(f"{addr}/tok/one:1"), Reference.parse(f"{addr}/tok/two:1")])
        assert ["repository:tok/one:pull,push"] in asked
        assert ["repository:tok/two:pull,push", "repository:tok/one:pull"] in asked   # the mount's scopes
        assert all(asked.count(s) == 1 for s in asked), asked      # tokens are cached per scope
        from builder.registry.login import login
        login(tmp_path / "cfg" / "config.json", addr, USER, PASSWORD)
        with pytest.raises(AuthError):
            login(tmp_path / "cfg2" / "config.json", addr, USER, "nope")
        assert not (tmp_path / "cfg2").exists()
        raw = requests.get(f"http://{addr}/v2/tok/two/manifests/1", timeout=10,
                           headers={"Authorization": f"Bearer {issuer.token(['repository:tok/two:pull'])}",
                                    "Accept": "application/vnd.oci.image.manifest.v1+json"})
        assert raw.status_code == 200 and raw.content == lay.manifest.data
