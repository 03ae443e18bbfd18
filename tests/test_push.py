"""Push: `builder.registry.push` against the real docker-registry (read back with skopeo), and the
CLI's --push / --output type=registry|image,push=true|docker|oci,tar=false from one solved image."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import requests

from builder.image.digest import Digest
from builder.image.oci import Descriptor
from builder.image.reference import Reference
from builder.registry.auth import Authenticator
from builder.registry.client import RegistryClient
from builder.registry.push import PushImage, PushOptions, push_image
from builder.store.content import ContentStore
from conftest import make_context
from registry_fixture import BlobInfo, LayoutImage, make_oci_layout


class RecordingSession(requests.Session):
    """A session that records the method and path of every request."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, str]] = []

    def request(self, method, url, *args, **kw):  # type: ignore[no-untyped-def, override]
        self.seen.append((method, url))
        return super().request(method, url, *args, **kw)


def _client(session: requests.Session | None = None) -> RegistryClient:
    s = session or requests.Session()
    return RegistryClient(s, auth=Authenticator(s), sleep=lambda _: None)


def _desc(b: BlobInfo) -> Descriptor:
    return Descriptor(media_type=b.media_type, digest=Digest.parse(b.digest), size=b.size)


def stored_image(tmp_path: Path, files: dict[str, bytes], name: str = "img") -> tuple[ContentStore, LayoutImage, PushImage]:
    """An image made by make_oci_layout, its blobs put into a fresh content store."""
    lay = make_oci_layout(tmp_path / name, files, "t")
    store = ContentStore(tmp_path / f"{name}-store")
    for b in (lay.manifest, lay.config, lay.layer):
        store.put_bytes(b.data)
    return store, lay, PushImage(manifest=_desc(lay.manifest), blobs=(_desc(lay.config), _desc(lay.layer)))


def skopeo_inspect(ref: str, *args: str) -> bytes:
    return subprocess.run(["skopeo", "inspect", "--tls-verify=false", *args, f"docker://{ref}"], check=True,
                          capture_output=True, timeout=60).stdout


def manifest_digest(ref: str) -> str:
    raw = skopeo_inspect(ref, "--raw")
    return str(Digest.of_bytes(raw))


def test_push_several_tags_and_repositories_mounts_and_skips(registry: str, tmp_path: Path) -> None:
    store, lay, image = stored_image(tmp_path, {"big.bin": os.urandom(300_000), "a.txt": b"a\n"})
    refs = [Reference.parse(f"{registry}/push/one:a"), Reference.parse(f"{registry}/push/one:b"),
            Reference.parse(f"{registry}/push/two:c")]
    opts = PushOptions(parallel=2, chunk_size=64 << 10)        # the layer goes up in PATCH chunks
    session = RecordingSession()
    report = push_image(_client(session), store, image, refs, opts)
    methods = [m for m, _ in session.seen]
    assert methods.count("PATCH") == -(-lay.layer.size // opts.chunk_size)    # chunked: one PATCH a chunk
    assert any("mount=" in u for m, u in session.seen if m == "POST")
    puts = [u for m, u in session.seen if m == "PUT" and "/manifests/" in u]
    assert [u.rsplit("/", 1)[1] for u in puts] == ["a", "b", "c"]
    last_blob_head = max(i for i, (m, u) in enumerate(session.seen) if m == "HEAD" and "/push/one/" in u)
    assert last_blob_head < min(i for i, (m, u) in enumerate(session.seen) if m == "PUT" and "/manifests/" in u)
    how = {(b.repository.split("/", 1)[1], str(b.digest)): b.how for b in report}
    assert how[("push/one", lay.layer.digest)] == "uploaded"
    assert how[("push/two", lay.layer.digest)] == "mounted"      # cross-repository mount
    assert how[("push/two", lay.config.digest)] == "mounted"
    for r in refs:
        assert manifest_digest(str(r)) == lay.manifest.digest
    out = tmp_path / "copied"
    subprocess.run(["skopeo", "copy", "--quiet", "--src-tls-verify=false", f"docker://{refs[2]}", f"oci:{out}:x"],
                   check=True, capture_output=True, timeout=60)
    idx = json.loads((out / "index.json").read_text())
    assert idx["manifests"][0]["digest"] == lay.manifest.digest
    assert (out / "blobs" / "sha256" / lay.layer.digest.split(":")[1]).read_bytes() == lay.layer.data
    again = push_image(_client(), store, image, refs, opts)     # a no-op re-push: every blob exists
    assert {b.how for b in again} == {"exists"}


def test_push_mounts_from_the_origin_repository(registry: str, tmp_path: Path) -> None:
    store, lay, image = stored_image(tmp_path, {"base": b"base layer\n"})
    base = Reference.parse(f"{registry}/origin/base:1")
    push_image(_client(), store, image, [base])
    from dataclasses import replace
    with_origin = replace(image, origins={_desc(lay.layer).digest: base.with_repository(base.repository)})
    report = push_image(_client(), store, with_origin, [Reference.parse(f"{registry}/origin/derived:1")])
    assert {str(b.digest): b.how for b in report}[lay.layer.digest] == "mounted"


def test_push_error_names_registry_repository_and_code(registry: str, tmp_path: Path) -> None:
    import pytest
    from builder.errors import PybuildError, RegistryError
    from builder.image.oci import MediaType
    store, lay, image = stored_image(tmp_path, {"x": b"x"})
    ref = Reference.parse(f"{registry}/push/missing:1")
    with pytest.raises(RegistryError, match=rf"{registry}/push/missing:1: manifest upload: HTTP 400.*MANIFEST_BLOB_UNKNOWN") as ei:
        _client().put_manifest(ref, MediaType.OCI_MANIFEST, lay.manifest.data)
    assert "MANIFEST_BLOB_UNKNOWN" in ei.value.codes and ei.value.status == 400
    # a blob that is not in the store: the push fails and the tag is never written
    (store.root / "blobs" / "sha256" / lay.layer.digest.split(":")[1]).unlink()
    with pytest.raises((PybuildError, OSError)):
        push_image(_client(), store, image, [ref])
    r = requests.get(f"http://{registry}/v2/push/missing/manifests/1", timeout=10)
    assert r.status_code == 404


# ---------------------------------------------------------------------- the CLI, end to end
def _build_ctx(workdir: Path, base_image: str) -> Path:
    return make_context(workdir / "ctx", {
        "Dockerfile": f"FROM {base_image}\nLABEL from=dockerfile\nCOPY hello.txt /hello.txt\n",
        "hello.txt": "hello from pybuild\n"})


def test_cli_push_and_every_output_from_one_image(pybuild, workdir: Path, registry: str, base_image: str) -> None:
    ctx = _build_ctx(workdir, base_image)
    meta, iid = workdir / "meta.json", workdir / "iid"
    docker_tar, oci_tar, oci_dir = workdir / "d.tar", workdir / "o.tar", workdir / "layout"
    r = pybuild("build", str(ctx), "-t", f"{registry}/cli/a:1", "-t", f"{registry}/cli/b:2", "--push",
                "--output", f"type=oci,dest={oci_tar}", "--output", f"type=docker,dest={docker_tar}",
                "--output", f"type=oci,dest={oci_dir},tar=false",
                "--output", f"type=registry,name={registry}/cli/c:3",
                "--label", "org.example.k=v", "--annotation", "org.opencontainers.image.title=demo",
                "--annotation", "manifest-descriptor:d=1", "--annotation", "index:i=2", "--metadata-file", str(meta), "--iidfile", str(iid))
    assert r.returncode == 0, r.stderr
    assert "mounted" in r.stderr, r.stderr        # the base image's layer, from test/busybox
    md = json.loads(meta.read_text())
    digest = md["containerimage.digest"]
    assert iid.read_text() == digest == r.stdout.decode().strip()
    assert md["containerimage.descriptor"]["digest"] == digest
    assert md["containerimage.descriptor"]["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert set(md["image.name"].split(",")) >= {f"{registry}/cli/a:1", f"{registry}/cli/b:2", f"{registry}/cli/c:3"}
    for ref in (f"{registry}/cli/a:1", f"{registry}/cli/b:2", f"{registry}/cli/c:3"):
        assert manifest_digest(ref) == digest, ref
    base_layers = [l["digest"] for l in json.loads(skopeo_inspect(base_image, "--raw"))["layers"]]
    pushed_layers = [l["digest"] for l in json.loads(skopeo_inspect(f"{registry}/cli/a:1", "--raw"))["layers"]]
    assert pushed_layers[:len(base_layers)] == base_layers      # base layers pushed from their original blobs
    assert len(pushed_layers) == len(base_layers) + 1
    cfg = json.loads(skopeo_inspect(f"{registry}/cli/a:1", "--config"))
    assert cfg["config"]["Labels"] == {"from": "dockerfile", "org.example.k": "v"}
    assert "sha256:" + __import__("hashlib").sha256(skopeo_inspect(f"{registry}/cli/a:1", "--config", "--raw")).hexdigest() \
        == md["containerimage.config.digest"]
    # the OCI tar and the layout directory hold the same image; the docker tarball its docker-typed twin
    import tarfile
    with tarfile.open(oci_tar) as tf:
        assert json.load(tf.extractfile("index.json"))["manifests"][0]["digest"] == digest  # type: ignore[arg-type]
    idx = json.loads((oci_dir / "index.json").read_text())
    assert [m["digest"] for m in idx["manifests"]] == [digest, digest]
    assert idx["annotations"] == {"i": "2"} and all(m["annotations"]["d"] == "1" for m in idx["manifests"])
    pushed = json.loads(skopeo_inspect(f"{registry}/cli/a:1", "--raw"))
    assert pushed["annotations"] == {"org.opencontainers.image.title": "demo"}
    with tarfile.open(docker_tar) as tf:      # docker media types by default, as BuildKit's docker exporter
        didx = json.load(tf.extractfile("index.json"))  # type: ignore[arg-type]
        dman = json.load(tf.extractfile("blobs/sha256/" + didx["manifests"][0]["digest"].split(":")[1]))  # type: ignore[arg-type]
    assert didx["manifests"][0]["mediaType"] == dman["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    assert dman["config"]["mediaType"] == "application/vnd.docker.container.image.v1+json"
    assert {l["mediaType"] for l in dman["layers"]} == {"application/vnd.docker.image.rootfs.diff.tar.gzip"}
    copied = workdir / "from-docker"
    subprocess.run(["skopeo", "copy", "--quiet", f"docker-archive:{docker_tar}", f"oci:{copied}:x"],
                   check=True, capture_output=True, timeout=60)
    layers = json.loads((copied / "index.json").read_text())
    assert layers["manifests"]
    subprocess.run(["skopeo", "copy", "--quiet", f"oci:{oci_dir}:{registry}/cli/a:1", f"oci:{workdir / 'again'}:y"],
                   check=True, capture_output=True, timeout=60)
    with tarfile.open(docker_tar) as tf:
        man = json.load(tf.extractfile("manifest.json"))  # type: ignore[arg-type]
    assert man[0]["RepoTags"] == [f"{registry}/cli/a:1", f"{registry}/cli/b:2"]


def test_cli_push_errors_exit_1_and_name_the_repository(pybuild, workdir: Path, registry: str,
                                                        base_image: str) -> None:
    ctx = _build_ctx(workdir, base_image)
    r = pybuild("build", str(ctx), "--push")
    assert r.returncode == 2 and "needs an image name" in r.stderr
    port = registry.rsplit(":", 1)[1]
    dead = f"127.0.0.1:{int(port) + 1 if int(port) < 65535 else 1}"
    r = pybuild("build", str(ctx), "-t", f"{dead}/nowhere/x:1", "--push")
    assert r.returncode == 1 and f"{dead}/nowhere/x" in r.stderr, r.stderr


def test_cli_image_output_with_push_true_also_stores(pybuild, workdir: Path, registry: str, base_image: str) -> None:
    import tarfile
    ctx = _build_ctx(workdir, base_image)
    name = f"{registry}/cli/stored:4"
    r = pybuild("build", str(ctx), "--output", f"type=image,name={name},push=true", "--progress", "plain")
    assert r.returncode == 0, r.stderr
    digest = r.stdout.decode().strip()
    assert manifest_digest(name) == digest
    images = pybuild("images")
    assert name in images.stdout.decode() and digest in images.stdout.decode()
    out = pybuild("build", str(ctx), "-t", "demo:5", "--output", "type=docker,dest=-")
    assert out.returncode == 0, out.stderr
    tar = workdir / "stdout.tar"
    tar.write_bytes(out.stdout)
    with tarfile.open(tar) as tf:
        assert json.load(tf.extractfile("manifest.json"))[0]["RepoTags"] == ["demo:5"]  # type: ignore[arg-type]
