"""The docker tarball and the OCI layout directory outputs, read back by skopeo."""
from __future__ import annotations

import json
import subprocess
import tarfile
from pathlib import Path

import pytest

from builder.export.assemble import assemble_image
from builder.export.docker import docker_name, write_docker_file
from builder.export.oci import write_oci_dir
from builder.image.digest import Digest
from builder.image.oci import Descriptor, ImageConfig, MediaType
from builder.image.view import LayerRef
from builder.store.content import ContentStore
from registry_fixture import make_oci_layout


def _image(tmp_path: Path, files: dict[str, bytes]):  # type: ignore[no-untyped-def]
    lay = make_oci_layout(tmp_path / "src", files, "t")
    store = ContentStore(tmp_path / "store")
    store.put_bytes(lay.layer.data)
    layer = LayerRef(descriptor=Descriptor(media_type=MediaType.OCI_LAYER_GZIP,
                                           digest=Digest.parse(lay.layer.digest), size=lay.layer.size),
                     diff_id=Digest.parse(lay.diff_id))
    return store, assemble_image(store, (layer,), ImageConfig())


@pytest.mark.parametrize("name,short", [("foo", "foo:latest"), ("docker.io/library/foo:1", "foo:1"),
                                        ("user/app:2", "user/app:2"), ("127.0.0.1:5000/a/b:3", "127.0.0.1:5000/a/b:3")])
def test_docker_names(name: str, short: str) -> None:
    assert docker_name(name) == short


def test_docker_tarball_is_read_by_skopeo(tmp_path: Path) -> None:
    store, image = _image(tmp_path, {"hello": b"docker\n"})
    out = tmp_path / "image.tar"
    write_docker_file(store, image, out, names=("docker.io/library/demo:1", "127.0.0.1:5000/x/demo:2"))
    with tarfile.open(out) as tf:
        names = tf.getnames()
        man = json.load(tf.extractfile("manifest.json"))  # type: ignore[arg-type]
        idx = json.load(tf.extractfile("index.json"))  # type: ignore[arg-type]
    assert {"oci-layout", "index.json", "manifest.json"} <= set(names)
    assert man[0]["RepoTags"] == ["demo:1", "127.0.0.1:5000/x/demo:2"]
    assert man[0]["Config"] == f"blobs/sha256/{image.config_descriptor.digest.hex}"
    assert [m["annotations"]["io.containerd.image.name"] for m in idx["manifests"]] == \
        ["docker.io/library/demo:1", "127.0.0.1:5000/x/demo:2"]
    for src in (f"docker-archive:{out}", f"docker-archive:{out}:demo:1"):
        dest = tmp_path / "copy"
        subprocess.run(["skopeo", "copy", "--quiet", src, f"oci:{dest}:c"], check=True, capture_output=True,
                       timeout=60)
        cfg = json.loads(subprocess.run(["skopeo", "inspect", "--config", f"oci:{dest}:c"], check=True,
                                        capture_output=True, timeout=60).stdout)
        assert cfg["rootfs"]["diff_ids"] == [str(d) for d in image.config.diff_ids]


def test_oci_layout_directory_keeps_other_tags(tmp_path: Path) -> None:
    store, image = _image(tmp_path, {"a": b"1"})
    dest = tmp_path / "layout"
    write_oci_dir(store, image, dest, tags=("one",))
    store2, image2 = _image(tmp_path / "second", {"a": b"2"})
    write_oci_dir(store2, image2, dest, tags=("two",))
    write_oci_dir(store2, image2, dest, tags=("two",))           # idempotent
    idx = json.loads((dest / "index.json").read_text())
    tags = {m["annotations"]["org.opencontainers.image.ref.name"]: m["digest"] for m in idx["manifests"]}
    assert tags == {"one": str(image.manifest_descriptor.digest), "two": str(image2.manifest_descriptor.digest)}
    for tag, want in tags.items():
        raw = subprocess.run(["skopeo", "inspect", "--raw", f"oci:{dest}:{tag}"], check=True, capture_output=True,
                             timeout=60).stdout
        assert str(Digest.of_bytes(raw)) == want


# ---------------------------------------------------------------------- --load
class FakeEngine:
    """A Docker engine's `/images/load` on a unix socket: records each upload, answers `reply`."""

    def __init__(self, path: Path, reply: tuple[int, bytes] = (200, b'{"stream":"Loaded image: demo:1\\n"}\n')) -> None:
        import socketserver
        import threading
        from http.server import BaseHTTPRequestHandler
        self.path, self.reply, self.bodies = path, reply, []
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                n = int(self.headers["Content-Length"])
                outer.bodies.append((self.path, self.headers["Content-Type"], self.rfile.read(n)))
                status, body = outer.reply
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a: object) -> None:
                pass

            def address_string(self) -> str:
                return "engine"

        self.server = socketserver.ThreadingUnixStreamServer(str(path), H)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_load_into_a_docker_engine(tmp_path: Path) -> None:
    import io
    from builder.errors import PybuildError
    from builder.export.docker import load_into_engine
    store, image = _image(tmp_path, {"l": b"load\n"})
    engine = FakeEngine(tmp_path / "docker.sock")
    try:
        said = load_into_engine(store, image, names=("demo:1",), socket_path=str(tmp_path / "docker.sock"))
        assert said == "Loaded image: demo:1"
        path, ctype, body = engine.bodies[0]
        assert path.startswith("/images/load") and ctype == "application/x-tar"
        with tarfile.open(fileobj=io.BytesIO(body)) as tf:
            assert json.load(tf.extractfile("manifest.json"))[0]["RepoTags"] == ["demo:1"]  # type: ignore[arg-type]
        engine.reply = (500, b'{"message":"no space left on device"}')
        with pytest.raises(PybuildError, match="refused the image: error: no space left"):
            load_into_engine(store, image, socket_path=str(tmp_path / "docker.sock"))
        engine.reply = (200, b'{"errorDetail":{"message":"bad tar"},"error":"bad tar"}\n')
        with pytest.raises(PybuildError, match="bad tar"):
            load_into_engine(store, image, socket_path=str(tmp_path / "docker.sock"))
    finally:
        engine.stop()
    with pytest.raises(PybuildError, match=r"no Docker engine at unix://.*nowhere.sock.*docker load -i"):
        load_into_engine(store, image, socket_path=str(tmp_path / "nowhere.sock"))
    assert not list(store.ingest_dir.iterdir())           # the temporary tarball is gone


def test_cli_load(pybuild, workdir: Path, base_image: str) -> None:
    from conftest import make_context
    ctx = make_context(workdir / "ctx", {"Dockerfile": f"FROM {base_image}\nCOPY f /f\n", "f": "f\n"})
    engine = FakeEngine(workdir / "engine.sock")
    try:
        r = pybuild("build", str(ctx), "-t", "demo:1", "--load", env={"DOCKER_HOST": f"unix://{workdir}/engine.sock"})
        assert r.returncode == 0, r.stderr
        assert len(engine.bodies) == 1
    finally:
        engine.stop()
    r = pybuild("build", str(ctx), "--load", env={"DOCKER_HOST": f"unix://{workdir}/gone.sock"})
    assert r.returncode == 1 and "no Docker engine" in r.stderr, r.stderr
    r = pybuild("build", str(ctx), "--load", env={"DOCKER_HOST": "tcp://1.2.3.4:2375"})
    assert r.returncode == 2 and "unix://" in r.stderr


def test_base_layers_keep_their_blobs_unless_force_compression(tmp_path: Path) -> None:
    from builder.export.dispatch import ExportInput, export_all
    from builder.image.oci import Manifest
    from builder.request import OutputSpec
    store, image = _image(tmp_path, {"base": b"layer\n"})
    chain = tuple(LayerRef(descriptor=d, diff_id=i) for d, i in zip(image.manifest.layers, image.config.diff_ids))
    src = ExportInput(chain=chain, config=ImageConfig(), built=frozenset(), tags=(), stdout=None)

    def layers(out: OutputSpec) -> list[Descriptor]:
        got = export_all(store, None, (out,), src)  # type: ignore[arg-type]   (no rootfs output)
        return list(Manifest.from_bytes(store.read_bytes(got.image.manifest_descriptor.digest)).layers)

    kept = layers(OutputSpec(type="oci", dest=str(tmp_path / "a.tar"), compression="zstd"))
    assert kept == list(image.manifest.layers)                        # the original blob, as pulled
    forced = layers(OutputSpec(type="oci", dest=str(tmp_path / "b.tar"), compression="zstd", force_compression=True))
    assert forced[0].media_type == MediaType.OCI_LAYER_ZSTD and forced[0].digest != kept[0].digest
    docker = layers(OutputSpec(type="docker", dest=str(tmp_path / "c.tar")))
    assert docker[0].digest == kept[0].digest and docker[0].media_type == MediaType.DOCKER_LAYER_GZIP
