from __future__ import annotations

import pytest

from builder.image.digest import Digest
from builder.image.reference import Reference

D = "sha256:" + "ab" * 32


@pytest.mark.parametrize("text, registry, repository, tag, digest, normalized", [
    ("busybox", "docker.io", "library/busybox", "latest", None, "docker.io/library/busybox:latest"),
    ("busybox:1.36", "docker.io", "library/busybox", "1.36", None, "docker.io/library/busybox:1.36"),
    ("library/busybox", "docker.io", "library/busybox", "latest", None, "docker.io/library/busybox:latest"),
    ("docker.io/busybox", "docker.io", "library/busybox", "latest", None, "docker.io/library/busybox:latest"),
    ("index.docker.io/library/busybox", "docker.io", "library/busybox", "latest", None,
     "docker.io/library/busybox:latest"),
    ("registry-1.docker.io/user/app:v1", "docker.io", "user/app", "v1", None, "docker.io/user/app:v1"),
    ("user/app", "docker.io", "user/app", "latest", None, "docker.io/user/app:latest"),
    ("localhost/app", "localhost", "app", "latest", None, "localhost/app:latest"),
    ("localhost:5000/a/b:t", "localhost:5000", "a/b", "t", None, "localhost:5000/a/b:t"),
    ("127.0.0.1:5000/x", "127.0.0.1:5000", "x", "latest", None, "127.0.0.1:5000/x:latest"),
    ("[::1]:5000/x:y", "[::1]:5000", "x", "y", None, "[::1]:5000/x:y"),
    ("ghcr.io/o/r/sub:1.0-rc_1", "ghcr.io", "o/r/sub", "1.0-rc_1", None, "ghcr.io/o/r/sub:1.0-rc_1"),
    ("Quay.IO/x", "Quay.IO", "x", "latest", None, "Quay.IO/x:latest"),
    (f"busybox@{D}", "docker.io", "library/busybox", "", D, f"docker.io/library/busybox@{D}"),
    (f"busybox:1@{D}", "docker.io", "library/busybox", "1", D, f"docker.io/library/busybox:1@{D}"),
    (f"host:5000/a@{D}", "host:5000", "a", "", D, f"host:5000/a@{D}"),
    ("a__b/c-d.e", "docker.io", "a__b/c-d.e", "latest", None, "docker.io/a__b/c-d.e:latest"),
])
def test_parse_table(text: str, registry: str, repository: str, tag: str, digest: str | None,
                     normalized: str) -> None:
    ref = Reference.parse(text)
    assert (ref.registry, ref.repository, ref.tag) == (registry, repository, tag)
    assert ref.digest == (Digest.parse(digest) if digest else None)
    assert str(ref) == normalized
    assert Reference.parse(str(ref)) == ref          # normalized form round-trips


@pytest.mark.parametrize("text, reason", [
    ("", "empty"),
    (" busybox", "whitespace"),
    ("Busybox", "lowercase"),
    ("busybox:", "bad tag"),
    ("busybox:-x", "bad tag"),
    ("busybox:" + "a" * 129, "bad tag"),
    ("busybox@sha256:abc", "bad digest"),
    ("busybox@md5:" + "a" * 32, "bad digest"),
    ("busybox@", "bad digest"),
    ("a//b", "bad path component"),
    ("a/b/", "bad path component"),
    ("a/-b", "bad path component"),
    ("a/b..c", "bad path component"),
    ("host:port:5000/x", "bad registry"),
    ("-host.io/x", "bad registry"),
    (":tag", "missing repository"),
    ("x/" + "a" * 260, "longer than"),
])
def test_parse_errors(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        Reference.parse(text)


@pytest.mark.parametrize("text, api_host", [
    ("busybox", "registry-1.docker.io"),
    ("index.docker.io/x/y", "registry-1.docker.io"),
    ("ghcr.io/x/y", "ghcr.io"),
    ("localhost:5000/x", "localhost:5000"),
])
def test_api_host(text: str, api_host: str) -> None:
    assert Reference.parse(text).api_host == api_host


def test_with_digest_identifier_and_name() -> None:
    ref = Reference.parse("localhost:5000/app:v2")
    assert ref.identifier == "v2"
    assert ref.name == "localhost:5000/app"
    pinned = ref.with_digest(Digest.parse(D))
    assert pinned.identifier == D
    assert str(pinned) == f"localhost:5000/app:v2@{D}"
    assert ref.digest is None                        # original unchanged
    assert str(pinned.with_tag("v3")) == "localhost:5000/app:v3"
    assert str(ref.with_repository("other")) == "localhost:5000/other"
    with pytest.raises(ValueError):
        ref.with_tag("bad tag")
