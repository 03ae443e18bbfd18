"""Reusable registry test helpers.

- `registry` (session fixture): Debian's `docker-registry` on a free 127.0.0.1 port with a temp
  storage dir; yields "127.0.0.1:PORT"; stopped at session end.
- `fake_http` (function fixture): a factory for small fault-injecting HTTP servers
  (`FakeServer`), each run in a thread on 127.0.0.1 (or another loopback address, optionally
  over TLS with `self_signed_cert`) and stopped after the test. A `FakeResponse` can also reset
  the connection instead of answering, or stream a body from a generator.
- `make_oci_layout` / `make_oci_index_layout`: write an OCI image layout with Python only.
- `skopeo_copy`: push a layout into a registry (`--dest-tls-verify=false`).

Import the fixtures from tests/conftest.py: `from registry_fixture import registry, fake_http`.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import socket
import ssl
import struct
import subprocess
import tarfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping

import pytest
import requests

REGISTRY_BIN = "/usr/bin/docker-registry"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME = "org.opencontainers.image.ref.name"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------- real registry
_REGISTRY_CONFIG = """\
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
"""


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real distribution registry on 127.0.0.1; yields "127.0.0.1:PORT"."""
    with run_registry(tmp_path_factory.mktemp("registry")) as addr:
        yield addr


@contextmanager
def run_registry(base: Path, auth: str = "", *, tls: tuple[Path, Path] | None = None) -> Iterator[str]:
    """Run docker-registry with its storage under `base` and the YAML `auth` section (indented
    by two spaces per level, e.g. an htpasswd or token section), over HTTPS with `tls`
    (certificate, key); yields "127.0.0.1:PORT"."""
    if not Path(REGISTRY_BIN).exists():
        pytest.skip("docker-registry is not installed")
    port = free_port()
    cfg = base / "config.yml"
    text = _REGISTRY_CONFIG.format(root=base / "storage", port=port)
    if tls is not None:
        text += f"  tls:\n    certificate: {tls[0]}\n    key: {tls[1]}\n"
    cfg.write_text(text + (f"auth:\n{auth}" if auth else ""))
    log = open(base / "registry.log", "wb")
    proc = subprocess.Popen([REGISTRY_BIN, "serve", str(cfg)], stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    try:
        _wait_ready(f"{'https' if tls else 'http'}://127.0.0.1:{port}/v2/", proc, base / "registry.log")
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"docker-registry exited {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            if requests.get(url, timeout=1, verify=False).status_code in (200, 401):
                return
        except requests.RequestException:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"docker-registry not ready after {timeout}s: {log.read_text()[-2000:]}")


def skopeo_copy(src: str, dest: str, *, all_images: bool = False) -> None:
    """`skopeo copy SRC DEST` with TLS verification off for the destination."""
    if shutil.which("skopeo") is None:
        pytest.skip("skopeo is not installed")
    cmd = ["skopeo", "copy", "--quiet", "--dest-tls-verify=false"]
    if all_images:
        cmd.append("--all")
    subprocess.run([*cmd, src, dest], check=True, capture_output=True, timeout=60)


# ---------------------------------------------------------------------------- OCI layouts
@dataclass(frozen=True, slots=True, kw_only=True)
class BlobInfo:
    media_type: str
    digest: str
    size: int
    data: bytes

    def descriptor(self, **extra: object) -> dict:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size, **extra}


@dataclass(frozen=True, slots=True, kw_only=True)
class LayoutImage:
    """What `make_oci_layout` wrote: the manifest, config and single layer blobs."""
    path: Path
    tag: str
    manifest: BlobInfo
    config: BlobInfo
    layer: BlobInfo
    diff_id: str
    platform: str


@dataclass(frozen=True, slots=True, kw_only=True)
class LayoutIndex:
    path: Path
    tag: str
    index: BlobInfo
    images: dict[str, LayoutImage] = field(default_factory=dict)   # platform string -> image


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _blob(path: Path, media_type: str, data: bytes) -> BlobInfo:
    d = _sha(data)
    p = path / "blobs" / "sha256" / d.split(":", 1)[1]
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return BlobInfo(media_type=media_type, digest=d, size=len(data), data=data)


def make_tar(files: Mapping[str, bytes]) -> bytes:
    """A deterministic uncompressed tar of regular files (sorted, root-owned, mtime 0)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(files[name]), 0o644, 0
            tf.addfile(info, io.BytesIO(files[name]))
    return buf.getvalue()


def _write_image(path: Path, files: Mapping[str, bytes], platform: str) -> tuple[BlobInfo, BlobInfo, BlobInfo, str]:
    tar = make_tar(files)
    diff_id = _sha(tar)
    layer = _blob(path, OCI_LAYER_GZIP, gzip.compress(tar, mtime=0))
    os_, arch, *variant = platform.split("/")
    cfg: dict = {"architecture": arch, "os": os_, "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"]},
                 "rootfs": {"type": "layers", "diff_ids": [diff_id]},
                 "history": [{"created_by": "make_oci_layout"}]}
    if variant:
        cfg["variant"] = variant[0]
    config = _blob(path, OCI_CONFIG, json.dumps(cfg, sort_keys=True).encode())
    man = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config.descriptor(),
           "layers": [layer.descriptor()]}
    manifest = _blob(path, OCI_MANIFEST, json.dumps(man, sort_keys=True).encode())
    return manifest, config, layer, diff_id


def _write_index_json(path: Path, entries: list[dict]) -> None:
    (path / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (path / "index.json").write_text(json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}))


def make_oci_layout(dir: Path, files: Mapping[str, bytes], tag: str, *,
                    platform: str = "linux/amd64") -> LayoutImage:
    """Write an OCI layout at `dir` holding one image (one gzip layer with `files`) tagged `tag`.
    Re-running on the same dir adds the tag (existing entries are kept)."""
    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    manifest, config, layer, diff_id = _write_image(dir, files, platform)
    _write_index_json(dir, _existing_entries(dir, tag) + [manifest.descriptor(annotations={REF_NAME: tag})])
    return LayoutImage(path=dir, tag=tag, manifest=manifest, config=config, layer=layer, diff_id=diff_id,
                       platform=platform)


def make_oci_index_layout(dir: Path, images: Mapping[str, Mapping[str, bytes]], tag: str) -> LayoutIndex:
    """Write an OCI layout whose `tag` names an image index with one image per platform
    (`images` maps "os/arch[/variant]" to that image's files)."""
    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    entries, out = [], {}
    for plat, files in images.items():
        manifest, config, layer, diff_id = _write_image(dir, files, plat)
        os_, arch, *variant = plat.split("/")
        p = {"os": os_, "architecture": arch, **({"variant": variant[0]} if variant else {})}
        entries.append(manifest.descriptor(platform=p))
        out[plat] = LayoutImage(path=dir, tag=tag, manifest=manifest, config=config, layer=layer,
                                diff_id=diff_id, platform=plat)
    idx = _blob(dir, OCI_INDEX, json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX,
                                            "manifests": entries}, sort_keys=True).encode())
    _write_index_json(dir, _existing_entries(dir, tag) + [idx.descriptor(annotations={REF_NAME: tag})])
    return LayoutIndex(path=dir, tag=tag, index=idx, images=out)


def _existing_entries(dir: Path, tag: str) -> list[dict]:
    try:
        old = json.loads((dir / "index.json").read_text())["manifests"]
    except FileNotFoundError:
        return []
    return [e for e in old if (e.get("annotations") or {}).get(REF_NAME) != tag]


# ---------------------------------------------------------------------------- fake server
@dataclass(frozen=True, slots=True, kw_only=True)
class FakeRequest:
    method: str
    path: str                     # path with query string
    headers: Mapping[str, str]    # header names lower-cased
    body: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class FakeResponse:
    """`reset`: answer nothing and reset the connection. `chunks`: stream the body from this
    iterable instead of `body` (no Content-Length unless `headers` has one: the body then ends
    when the connection closes; a client that stops reading makes the server stop writing)."""
    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    reset: bool = False
    chunks: Iterable[bytes] | None = None


Handler = Callable[[FakeRequest], FakeResponse]


class FakeServer:
    """A threaded HTTP/1.0 server on `host` (a loopback address) answering every request with
    `handler(request)`; HTTPS when `tls` is a (cert, key) pair. Every request is recorded in
    `requests` (in arrival order)."""

    def __init__(self, handler: Handler, *, host: str = "127.0.0.1", tls: tuple[Path, Path] | None = None) -> None:
        self.handler = handler
        self.requests: list[FakeRequest] = []
        self._lock = threading.Lock()
        outer = self

        class _H(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                req = FakeRequest(method=self.command, path=self.path,
                                  headers={k.lower(): v for k, v in self.headers.items()}, body=body)
                with outer._lock:
                    outer.requests.append(req)
                resp = outer.handler(req)
                if resp.reset:
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                    return
                self.send_response(resp.status)
                for k, v in resp.headers.items():
                    self.send_header(k, v)
                if resp.chunks is None and not any(k.lower() == "content-length" for k in resp.headers):
                    self.send_header("Content-Length", str(len(resp.body)))
                self.end_headers()
                if self.command != "HEAD":
                    self._write_body(resp)

            def _write_body(self, resp: FakeResponse) -> None:
                try:
                    for chunk in (resp.chunks if resp.chunks is not None else (resp.body,)):
                        self.wfile.write(chunk)
                except OSError:             # the client went away: stop writing
                    self.close_connection = True

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

            def log_message(self, *args: object) -> None:
                pass

        self._httpd = ThreadingHTTPServer((host, 0), _H)
        self._httpd.daemon_threads = True
        if tls is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(tls[0]), str(tls[1]))
            self._httpd.socket = ctx.wrap_socket(self._httpd.socket, server_side=True)
        self.port = self._httpd.server_address[1]
        self.host = f"{host}:{self.port}"
        self.url = f"{'https' if tls else 'http'}://{self.host}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


def self_signed_cert(dir: Path, ip: str = "127.0.0.1") -> tuple[Path, Path]:
    """A throw-away self-signed certificate and key for `ip` (openssl CLI); skips without openssl."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = dir / "cert.pem", dir / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", f"/CN={ip}",
                    "-addext", f"subjectAltName=IP:{ip}"], check=True, capture_output=True, timeout=60)
    return cert, key


@pytest.fixture
def fake_http() -> Iterator[Callable[..., FakeServer]]:
    """Factory: `fake_http(handler, host=..., tls=...) -> FakeServer`; all servers stop after the test."""
    servers: list[FakeServer] = []

    def start(handler: Handler, **kw: object) -> FakeServer:
        s = FakeServer(handler, **kw)  # type: ignore[arg-type]
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop()
