"""The registry configuration file (buildkitd.toml's [registry]): mirrors, plain HTTP, insecure
TLS and a CA per registry, and the default CA bundle."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest
import requests

from builder.errors import RegistryError, UsageError
from builder.image.oci import Platform
from builder.image.reference import Reference
from builder.registry.config import HostConfig, RegistryConfig, load_registry_config
from builder.registry.http import HttpClient
from builder.registry.connect import registry_client
from builder.registry.pull import pull_image
from builder.store.content import ContentStore
from registry_fixture import (FakeRequest, FakeResponse, FakeServer, fake_http,  # noqa: F401  (fixture)
                              make_oci_layout, self_signed_cert, skopeo_copy)


def test_config_file_is_read_and_checked(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    f = tmp_path / "config.toml"
    f.write_text('[registry."docker.io"]\nmirrors = ["https://mirror.example.com/"]\n'
                 '[registry."reg.local:5000"]\nhttp = true\n[registry."secure.local"]\nca = ["ca.pem"]\n'
                 '[registry."lax.local"]\ninsecure = true\n')
    cfg = load_registry_config(f, ca_bundle=Path("/etc/bundle.pem"))
    assert cfg.mirrors("docker.io") == ("mirror.example.com",)
    assert cfg.plain_http_hosts() == ("reg.local:5000",)
    assert cfg.verify("secure.local") == str(ca) and cfg.verify("secure.local:443") == str(ca)
    assert cfg.verify("lax.local") is False and cfg.verify("other.example") == "/etc/bundle.pem"
    assert load_registry_config(tmp_path / "missing.toml") == RegistryConfig()
    for bad in ('[registry."x"]\nhttp = "yes"\n', '[registry."x"]\nbogus = 1\n', '[registry."x"]\nca = ["nope.pem"]\n',
                "not toml [", '[registry."x"]\nmirrors = [1]\n'):
        f.write_text(bad)
        with pytest.raises(UsageError, match="registry config"):
            load_registry_config(f)


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_ca_and_insecure_per_host(tmp_path: Path, fake_http: Callable[..., FakeServer]) -> None:
    cert, key = self_signed_cert(tmp_path)
    server = fake_http(lambda req: FakeResponse(body=b"ok"), tls=(cert, key))
    url = f"https://{server.host}/v2/"

    def get(cfg: RegistryConfig) -> int:
        http = HttpClient(requests.Session(), verify=cfg.verify, sleep=lambda _: None)
        resp = http.request("GET", url)
        resp.close()
        return resp.status_code

    assert get(RegistryConfig(hosts={server.host: HostConfig(ca=(cert,))})) == 200
    assert get(RegistryConfig(ca_bundle=cert)) == 200                       # SSL_CERT_FILE
    assert get(RegistryConfig(hosts={server.host: HostConfig(insecure=True)})) == 200
    with pytest.raises(RegistryError, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
        get(RegistryConfig())


def test_pull_through_a_mirror_and_past_a_broken_one(registry: str, tmp_path: Path,
                                                    fake_http: Callable[..., FakeServer]) -> None:
    lay = make_oci_layout(tmp_path / "lay", {"m": b"mirrored\n"}, "v1")
    skopeo_copy(f"oci:{lay.path}:v1", f"docker://{registry}/mirrored/img:1")
    broken = fake_http(lambda req: FakeResponse(status=404, body=b'{"errors":[{"code":"NAME_UNKNOWN"}]}'))
    # the origin does not exist: only the mirror can serve it
    cfg = RegistryConfig(hosts={"origin.invalid": HostConfig(mirrors=(broken.host, registry))})
    client = registry_client(cfg)
    store = ContentStore(tmp_path / "store")
    img = pull_image(client, store, Reference.parse("origin.invalid/mirrored/img:1"), Platform(os="linux", architecture="amd64"))
    assert str(img.manifest_descriptor.digest) == lay.manifest.digest
    assert broken.requests, "the first mirror was tried"
    # a mirror that lacks the image: the registry itself answers
    cfg2 = RegistryConfig(hosts={registry: HostConfig(mirrors=(broken.host,))})
    img2 = pull_image(registry_client(cfg2), ContentStore(tmp_path / "store2"), Reference.parse(f"{registry}/mirrored/img:1"),
                      Platform(os="linux", architecture="amd64"))
    assert img2.manifest_descriptor == img.manifest_descriptor
    client.close()
