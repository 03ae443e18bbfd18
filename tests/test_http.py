"""builder.registry.http.HttpClient against local fault-injecting HTTP(S) servers on loopback:
retries (resets, 429 with odd Retry-After values, 500s), redirects (other host, HTTPS → HTTP),
capped streaming reads, bad URLs and ports, and `download` for ADD <url>."""
from __future__ import annotations

import errno
import hashlib
import io
import math
import time
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path
from typing import Callable, Iterator

import pytest
import requests

from builder.errors import RegistryError, SourceError
from builder.image.digest import Digest
from builder.registry.http import (DOWNLOAD_CAP, HttpClient, RetryPolicy, check_url, error_body,
                                   parse_retry_after, read_capped)
from registry_fixture import (FakeRequest, FakeResponse, FakeServer, fake_http,  # noqa: F401  (fixture)
                              free_port, self_signed_cert)

Fake = Callable[..., FakeServer]


def _http(sleeps: list[float] | None = None, *, session: requests.Session | None = None,
          jitter: float = 1.0, **kw: object) -> HttpClient:
    rec = sleeps if sleeps is not None else []
    return HttpClient(session or requests.Session(), sleep=rec.append, jitter=lambda: jitter,
                      **kw)  # type: ignore[arg-type]


def _script(*answers: FakeResponse) -> Callable[[FakeRequest], FakeResponse]:
    """A handler giving `answers` in order, then repeating the last one."""
    calls: list[int] = []

    def handle(req: FakeRequest) -> FakeResponse:
        calls.append(1)
        return answers[min(len(calls), len(answers)) - 1]
    return handle


# ====================================================================== retries
@pytest.mark.parametrize("value, slept", [
    ("2", 2.0), ("0.25", 0.25), ("-5", 0.0), ("99999", 60.0), ("1e999", 60.0), ("inf", 60.0),
    ("nan", 0.5), ("NaN", 0.5), ("soon", 0.5), ("", 0.5), ("Thu, 01 Jan 1970 00:00:00 GMT", 0.0),
    ("Fri, 31 Dec 9999 23:59:59 GMT", 60.0), ("Mon, 99 Foo 2020 99:99:99 GMT", 0.5),
])
def test_429_retry_after_is_clamped(fake_http: Fake, value: str, slept: float) -> None:
    headers = {"Retry-After": value} if value else {}
    srv = fake_http(_script(FakeResponse(status=429, headers=headers), FakeResponse(body=b"ok")))
    sleeps: list[float] = []
    with _http(sleeps).request("GET", f"{srv.url}/x") as resp:
        assert resp.status_code == 200 and resp.content == b"ok"
    assert sleeps == [slept] and len(srv.requests) == 2


def test_retry_after_parsing() -> None:
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    assert parse_retry_after(format_datetime(now + timedelta(seconds=30), usegmt=True), now) == 30.0
    assert parse_retry_after("nan") is None and parse_retry_after(None) is None
    assert parse_retry_after("-inf") == -math.inf
    pol = RetryPolicy(max_retry_after=7.0)
    assert (pol.clamp(-math.inf), pol.clamp(math.inf), pol.clamp(3.0)) == (0.0, 7.0, 3.0)


def test_500s_back_off_with_jitter_then_return_the_last_answer(fake_http: Fake) -> None:
    srv = fake_http(lambda req: FakeResponse(status=500))
    for jitter, want in ((1.0, [0.5, 1.0, 2.0]), (0.0, [0.25, 0.5, 1.0])):
        sleeps: list[float] = []
        with _http(sleeps, jitter=jitter).request("GET", f"{srv.url}/x") as resp:
            assert resp.status_code == 500
        assert sleeps == want
    sleeps = []
    client = HttpClient(requests.Session(), sleep=sleeps.append)           # default: random jitter
    client.request("GET", f"{srv.url}/x").close()
    assert all(lo <= s <= hi for s, (lo, hi) in zip(sleeps, ((0.25, 0.5), (0.5, 1.0), (1.0, 2.0))))
    assert len(sleeps) == 3


def test_connection_resets_are_retried(fake_http: Fake) -> None:
    srv = fake_http(_script(FakeResponse(reset=True), FakeResponse(reset=True), FakeResponse(body=b"fine")))
    sleeps: list[float] = []
    sink = io.BytesIO()
    digest, size = _http(sleeps).download(f"{srv.url}/f", sink)
    assert sink.getvalue() == b"fine" and size == 4 and digest == Digest.of_bytes(b"fine")
    assert len(sleeps) == 2 and len(srv.requests) == 3

    always = fake_http(lambda req: FakeResponse(reset=True))
    with pytest.raises(SourceError, match=rf"GET {always.url}/f: .*after 4 tries") as ei:
        _http().download(f"{always.url}/f", io.BytesIO())
    assert isinstance(ei.value.__cause__, RegistryError)
    with pytest.raises(RegistryError, match=r"^reg/app: GET .*after 4 tries") as ri:
        _http().request("GET", f"{always.url}/f", label="reg/app")
    assert ri.value.status is None


def test_a_silent_server_times_out_and_is_retried(fake_http: Fake) -> None:
    def slow(req: FakeRequest) -> FakeResponse:
        time.sleep(0.5)
        return FakeResponse(body=b"late")

    srv = fake_http(slow)
    sleeps: list[float] = []
    started = time.monotonic()
    with pytest.raises(SourceError, match=r"timed out.*\(after 2 tries\)"):
        _http(sleeps, timeout=0.1, retry=RetryPolicy(max_tries=2)).download(f"{srv.url}/f", io.BytesIO())
    assert len(srv.requests) == 2 and sleeps == [0.5] and time.monotonic() - started < 5


def test_connection_refused_is_a_clean_error() -> None:
    sleeps: list[float] = []
    url = f"http://127.0.0.1:{free_port()}/file"
    with pytest.raises(SourceError, match=rf"{url}.*after 4 tries"):
        _http(sleeps).download(url, io.BytesIO())
    assert len(sleeps) == 3


# ====================================================================== URLs
@pytest.mark.parametrize("url, why", [
    ("http://127.0.0.1:99999/x", "invalid URL"), ("http://127.0.0.1:0/x", "port 0"),
    ("http://127.0.0.1:-1/x", "invalid URL"), ("http://127.0.0.1:abc/x", "invalid URL"),
    ("http://[::1/x", "invalid URL"), ("http:///x", "no host"), ("ftp://127.0.0.1/x", "scheme"),
    ("file:///etc/passwd", "scheme"), ("127.0.0.1/x", "scheme"),
])
def test_bad_urls_and_ports_are_clean_errors(url: str, why: str) -> None:
    with pytest.raises(RegistryError, match=why):
        check_url(url)
    with pytest.raises(SourceError, match=why):
        _http().download(url, io.BytesIO())


@pytest.mark.parametrize("location, why", [
    ("http://127.0.0.1:70000/y", "invalid URL 'http://127.0.0.1:70000/y'"),
    ("http://[::1/y", "Invalid IPv6 URL|invalid redirect Location"),   # requests itself may refuse it
    ("gopher://127.0.0.1/y", "unsupported URL scheme"),
])
def test_redirect_to_a_bad_location_is_a_clean_error(fake_http: Fake, location: str, why: str) -> None:
    srv = fake_http(lambda req: FakeResponse(status=302, headers={"Location": location}))
    with pytest.raises(SourceError, match=why):
        _http().download(f"{srv.url}/x", io.BytesIO())


# ====================================================================== redirects
def test_authorization_never_follows_a_redirect_to_another_host(fake_http: Fake) -> None:
    other = fake_http(lambda req: FakeResponse(body=b"data"), host="127.0.0.2")
    home = fake_http(lambda req: FakeResponse(status=302, headers={"Location": f"{other.url}/bucket"})
                     if req.path == "/away" else FakeResponse(status=307, headers={"Location": "/away"}))
    with _http().request("GET", f"{home.url}/start", auth="Bearer SECRET") as resp:
        assert resp.content == b"data"
    assert [r.headers.get("authorization") for r in home.requests] == ["Bearer SECRET", "Bearer SECRET"]
    assert "authorization" not in other.requests[0].headers
    # same host, other port: another origin too
    port = fake_http(lambda req: FakeResponse(body=b"p"))
    hop = fake_http(lambda req: FakeResponse(status=301, headers={"Location": f"{port.url}/p"}))
    _http().request("GET", hop.url + "/", auth="Basic abc").close()
    assert "authorization" not in port.requests[0].headers


def test_post_becomes_get_on_303_and_redirect_loops_end(fake_http: Fake) -> None:
    target = fake_http(lambda req: FakeResponse(body=req.method.encode()))
    srv = fake_http(lambda req: FakeResponse(status=303, headers={"Location": f"{target.url}/t"}))
    with _http().request("POST", f"{srv.url}/p", body=lambda: b"form",
                         headers={"Content-Type": "text/plain"}) as resp:
        assert resp.content == b"GET"
    assert target.requests[0].body == b"" and "content-type" not in target.requests[0].headers
    loop = fake_http(lambda req: FakeResponse(status=302, headers={"Location": "/again"}))
    with pytest.raises(RegistryError, match="more than 10 redirects"):
        _http().request("GET", f"{loop.url}/x")
    assert len(loop.requests) == 11


@pytest.fixture
def tls_session(tmp_path: Path) -> Iterator[tuple[requests.Session, tuple[Path, Path]]]:
    cert_key = self_signed_cert(tmp_path)
    s = requests.Session()
    s.trust_env = False               # REQUESTS_CA_BUNDLE in the environment would win over verify
    s.verify = str(cert_key[0])
    yield s, cert_key
    s.close()


def test_https_to_http_redirect_is_refused(fake_http: Fake,
                                           tls_session: tuple[requests.Session, tuple[Path, Path]]) -> None:
    session, cert_key = tls_session
    plain = fake_http(lambda req: FakeResponse(body=b"downgraded"))
    secure = fake_http(lambda req: FakeResponse(status=302, headers={"Location": f"{plain.url}/f"}), tls=cert_key)
    assert secure.url.startswith("https://")
    with pytest.raises(SourceError, match="refusing redirect from HTTPS"):
        _http(session=session).download(f"{secure.url}/f", io.BytesIO())
    with pytest.raises(RegistryError, match="refusing redirect from HTTPS"):
        _http(session=session).request("GET", f"{secure.url}/f", auth="Bearer SECRET")
    assert plain.requests == []
    ok = fake_http(lambda req: FakeResponse(body=b"over tls"), tls=cert_key)     # https → https is fine
    hop = fake_http(lambda req: FakeResponse(status=302, headers={"Location": f"{ok.url}/f"}), tls=cert_key)
    sink = io.BytesIO()
    _http(session=session).download(f"{hop.url}/f", sink)
    assert sink.getvalue() == b"over tls"


def test_tls_failure_is_a_clean_error_without_retries(fake_http: Fake, tmp_path: Path) -> None:
    srv = fake_http(lambda req: FakeResponse(body=b"x"), tls=self_signed_cert(tmp_path))
    sleeps: list[float] = []
    with pytest.raises(SourceError, match=f"GET {srv.url}/f"):
        _http(sleeps).download(f"{srv.url}/f", io.BytesIO())     # not trusted: no verify path given
    assert sleeps == []


# ====================================================================== capped reads
def _endless(counter: list[int], chunk: bytes = b"z" * 65536, limit: int = 4096) -> Iterator[bytes]:
    for _ in range(limit):                     # 256 MiB at most: bounded even if the client never stops
        counter.append(len(chunk))
        yield chunk


def test_oversize_bodies_are_never_read_whole(fake_http: Fake) -> None:
    sent: list[int] = []
    stream = fake_http(lambda req: FakeResponse(chunks=_endless(sent)))
    with pytest.raises(SourceError, match="more than the 1048576-byte download cap"):
        _http().download(f"{stream.url}/f", io.BytesIO(), max_bytes=1 << 20)
    assert sum(sent) < 64 << 20                    # stopped long before the 256 MiB the server had
    declared = fake_http(lambda req: FakeResponse(headers={"Content-Length": str(1 << 40)}, chunks=iter(())))
    sink = io.BytesIO()
    with pytest.raises(SourceError, match=f"{1 << 40} bytes, more than"):
        _http().download(f"{declared.url}/f", sink, max_bytes=1 << 20)
    assert sink.getvalue() == b""
    more: list[int] = []
    capped = fake_http(lambda req: FakeResponse(chunks=_endless(more)))
    with _http().request("GET", f"{capped.url}/m") as resp:
        with pytest.raises(RegistryError, match="thing: larger than 100000 bytes"):
            read_capped(resp, 100_000, "thing")
    assert sum(more) < 64 << 20
    assert DOWNLOAD_CAP == 8 << 30


def test_truncated_body_is_a_transfer_error(fake_http: Fake) -> None:
    srv = fake_http(lambda req: FakeResponse(headers={"Content-Length": "1000"}, chunks=iter((b"short",))))
    with pytest.raises(SourceError, match="transfer failed after"):
        _http().download(f"{srv.url}/f", io.BytesIO())


# ====================================================================== download
def test_download_streams_hashes_and_reports_status(fake_http: Fake) -> None:
    data = bytes(range(256)) * 5000
    srv = fake_http(lambda req: FakeResponse(body=data) if req.path == "/file.tgz" else FakeResponse(status=404))
    sink = io.BytesIO()
    digest, size = _http().download(f"{srv.url}/file.tgz", sink)
    assert (digest, size) == (Digest("sha256", hashlib.sha256(data).hexdigest()), len(data))
    assert sink.getvalue() == data
    with pytest.raises(SourceError, match=rf"^{srv.url}/missing: HTTP 404$"):
        _http().download(f"{srv.url}/missing", io.BytesIO())
    fivexx = fake_http(lambda req: FakeResponse(status=502))
    sleeps: list[float] = []
    with pytest.raises(SourceError, match="HTTP 502"):
        _http(sleeps).download(f"{fivexx.url}/f", io.BytesIO())
    assert len(fivexx.requests) == 4 and len(sleeps) == 3
    created = fake_http(lambda req: FakeResponse(status=204))
    with pytest.raises(SourceError, match="HTTP 204"):
        _http().download(f"{created.url}/f", io.BytesIO())


def test_a_failing_sink_is_a_source_error(fake_http: Fake) -> None:
    class Full(io.BytesIO):
        def write(self, b: object) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

    srv = fake_http(lambda req: FakeResponse(body=b"data"))
    with pytest.raises(SourceError, match="cannot store the download: .*No space left"):
        _http().download(f"{srv.url}/f", Full())


def test_passwords_in_urls_stay_out_of_messages(fake_http: Fake) -> None:
    srv = fake_http(lambda req: FakeResponse(status=404))
    with pytest.raises(SourceError) as ei:
        _http().download(f"http://user:s3cret@{srv.host}/f", io.BytesIO())
    assert str(ei.value) == f"http://user:xxxxx@{srv.host}/f: HTTP 404"
    with pytest.raises(RegistryError) as ri:
        check_url("http://user:s3cret@127.0.0.1:99999/f")
    assert "s3cret" not in str(ri.value) and "user:xxxxx@" in str(ri.value)


def test_error_body_parsing(fake_http: Fake) -> None:
    bodies = {"/ok": b'{"errors":[{"code":"NAME_UNKNOWN","message":"repository name not known"},'
                     b'{"code":"DENIED"},"junk",{"message":"no code"}]}',
              "/html": b"<html>nope</html>", "/list": b"[1,2]", "/weird": b'{"errors":{"code":"X"}}',
              "/big": b'{"errors":[{"code":"A","message":"' + b"m" * 20000 + b'"}]}'}
    srv = fake_http(lambda req: FakeResponse(status=400, body=bodies[req.path]))
    got = {}
    for path in bodies:
        with _http().request("GET", srv.url + path) as resp:
            got[path] = error_body(resp)
    assert got["/ok"].codes == ("NAME_UNKNOWN", "DENIED")
    assert got["/ok"].detail == "NAME_UNKNOWN repository name not known; DENIED; no code"
    assert all(got[p].codes == () for p in ("/html", "/list", "/weird", "/big"))


def test_scheme_for_hosts() -> None:
    c = _http(insecure_hosts=("myreg:5000", "plainhost"))
    assert [c.scheme_for(h) for h in ("localhost:5000", "127.0.0.9", "[::1]:5", "myreg:5000", "plainhost:1",
                                      "myreg:5001", "ghcr.io", "10.0.0.1:5000")] == \
        ["http"] * 5 + ["https"] * 3
