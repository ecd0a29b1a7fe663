"""Bundle downloads against a real loopback HTTP server that cuts, stalls and misbehaves on cue."""

from __future__ import annotations

import hashlib
import http.server
import socketserver
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from edge_node.config import OtaConfig
from edge_node.errors import DownloadError
from edge_node.ota.download import Progress, check_url, download
from edge_node.ota.serve import make_server
from tests.support.ota_http import serving
from tests.support.pki import Authority

SIZE = 300_000


@pytest.fixture
def site(tmp_path: Path) -> tuple[Path, bytes, str]:
    root = tmp_path / "site"
    root.mkdir()
    data = hashlib.sha256(b"seed").digest() * (SIZE // 32)
    (root / "b.tar.gz").write_bytes(data)
    return root, data, hashlib.sha256(data).hexdigest()


def _cfg(**kw: object) -> OtaConfig:
    base: dict[str, object] = {"allow_http": True, "download_timeout": 0.5, "download_attempts": 4}
    base.update(kw)
    return OtaConfig(**base)


def _fetch(
    url: str,
    dest: Path,
    sha: str,
    cfg: OtaConfig | None = None,
    *,
    size: int | None = None,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
    context: ssl.SSLContext | None = None,
) -> Path:
    return download(
        url,
        dest,
        sha256=sha,
        cfg=cfg or _cfg(),
        backoff=0.01,
        size=size,
        progress=progress,
        cancel=cancel,
        context=context,
    )


def test_download_happy_path_reports_progress(site: tuple[Path, bytes, str], tmp_path: Path) -> None:
    root, data, sha = site
    seen: list[tuple[int, int | None]] = []
    with serving(root) as srv:
        out = _fetch(
            f"{srv.url}/b.tar.gz",
            tmp_path / "b.tar.gz",
            sha,
            size=len(data),
            progress=lambda done, total: seen.append((done, total)),
        )
    assert out.read_bytes() == data
    assert not (tmp_path / "b.tar.gz.part").exists()
    assert seen[-1] == (len(data), len(data))
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


@pytest.mark.parametrize("fault", ["cut", "stall"])
def test_interrupted_download_resumes_with_range(site: tuple[Path, bytes, str], tmp_path: Path, fault: str) -> None:
    root, data, sha = site
    with serving(root, faults=True) as srv:
        srv.faults = [fault]
        srv.stall_seconds = 2.0
        out = _fetch(f"{srv.url}/b.tar.gz", tmp_path / "b.tar.gz", sha)
    assert out.read_bytes() == data
    (_, first_range, first_status), (_, second_range, second_status) = srv.requests[:2]
    assert first_range is None and first_status == 200
    assert second_range is not None and second_range.startswith("bytes=") and second_status == 206
    assert int(second_range[6:-1]) > 0


@pytest.mark.parametrize("fault", ["norange", "badrange"])
def test_resume_restarts_when_the_server_does_not_honour_range(
    site: tuple[Path, bytes, str], tmp_path: Path, fault: str
) -> None:
    root, data, sha = site
    with serving(root, faults=True) as srv:
        srv.faults = ["cut", fault]
        out = _fetch(f"{srv.url}/b.tar.gz", tmp_path / "b.tar.gz", sha)
    assert out.read_bytes() == data
    assert srv.requests[-1] == ("/b.tar.gz", None, 200)  # started over from byte 0


def test_partial_file_from_an_earlier_run_is_resumed(site: tuple[Path, bytes, str], tmp_path: Path) -> None:
    root, data, sha = site
    (tmp_path / "b.tar.gz.part").write_bytes(data[:1000])
    with serving(root, faults=True) as srv:
        out = _fetch(f"{srv.url}/b.tar.gz", tmp_path / "b.tar.gz", sha, size=len(data))
    assert out.read_bytes() == data
    assert srv.requests == [("/b.tar.gz", "bytes=1000-", 206)]


def test_404_fails_at_once_without_retries(site: tuple[Path, bytes, str], tmp_path: Path) -> None:
    root, _, sha = site
    with serving(root, faults=True) as srv, pytest.raises(DownloadError, match="HTTP 404"):
        _fetch(f"{srv.url}/missing.tar.gz", tmp_path / "b.tar.gz", sha)
    assert len(srv.requests) == 1
    assert not list(tmp_path.glob("b.tar.gz*"))


def test_server_errors_are_retried_then_give_up(site: tuple[Path, bytes, str], tmp_path: Path) -> None:
    root, _, sha = site
    with serving(root, faults=True) as srv:
        srv.faults = ["500"] * 10
        with pytest.raises(DownloadError, match="after 3 attempt"):
            _fetch(f"{srv.url}/b.tar.gz", tmp_path / "b.tar.gz", sha, _cfg(download_attempts=3))
    assert len(srv.requests) == 3


def test_a_stall_on_every_attempt_fails_cleanly_and_keeps_the_partial_file(
    site: tuple[Path, bytes, str], tmp_path: Path
) -> None:
    root, data, sha = site
    with serving(root, faults=True) as srv:
        srv.faults = ["stall"] * 2
        srv.stall_seconds = 1.0
        start = time.monotonic()
        with pytest.raises(DownloadError, match="after 2 attempt"):
            _fetch(f"{srv.url}/b.tar.gz", tmp_path / "b.tar.gz", sha, _cfg(download_attempts=2))
        assert time.monotonic() - start < 5
    part = tmp_path / "b.tar.gz.part"
    assert 0 < part.stat().st_size < len(data)  # a later command resumes from here
    assert not (tmp_path / "b.tar.gz").exists()


def test_declared_size_over_the_cap_is_refused_before_any_request(
    site: tuple[Path, bytes, str], tmp_path: Path
) -> None:
    root, _, sha = site
    with serving(root, faults=True) as srv:
        with pytest.raises(DownloadError, match="exceeds"):
            _fetch(
                f"{srv.url}/b.tar.gz",
                tmp_path / "b.tar.gz",
                sha,
                _cfg(max_bundle_bytes=100_000),
                size=200_000,
            )
        assert srv.requests == []


@pytest.mark.parametrize(
    ("fault", "message"),
    [(None, "over the 100000-byte limit"), ("nolength", "exceeds the 100000-byte limit")],
    ids=["content-length", "streamed-bytes"],
)
def test_oversize_bundle_is_refused(
    site: tuple[Path, bytes, str], tmp_path: Path, fault: str | None, message: str
) -> None:
    root, _, sha = site
    with serving(root, faults=True) as srv:
        srv.faults = [fault]
        with pytest.raises(DownloadError, match=message):
            _fetch(f"{srv.url}/b.tar.gz", tmp_path / "b.tar.gz", sha, _cfg(max_bundle_bytes=100_000))
    assert not list(tmp_path.glob("b.tar.gz*"))


def test_content_length_that_contradicts_the_command_is_refused(site: tuple[Path, bytes, str], tmp_path: Path) -> None:
    root, data, sha = site
    with serving(root) as srv, pytest.raises(DownloadError, match="the command said"):
        _fetch(f"{srv.url}/b.tar.gz", tmp_path / "b.tar.gz", sha, size=len(data) - 1)


def test_sha256_mismatch_is_refused_and_nothing_is_kept(site: tuple[Path, bytes, str], tmp_path: Path) -> None:
    root, _, _ = site
    with serving(root) as srv, pytest.raises(DownloadError, match="sha256"):
        _fetch(f"{srv.url}/b.tar.gz", tmp_path / "b.tar.gz", "0" * 64)
    assert not list(tmp_path.glob("b.tar.gz*"))


def test_cancel_stops_the_download(site: tuple[Path, bytes, str], tmp_path: Path) -> None:
    root, _, sha = site
    cancel = threading.Event()
    cancel.set()
    with serving(root) as srv, pytest.raises(DownloadError, match="cancelled"):
        _fetch(f"{srv.url}/b.tar.gz", tmp_path / "b.tar.gz", sha, cancel=cancel)


def test_url_policy() -> None:
    assert check_url("https://h/x.tar.gz", allow_http=False)
    assert check_url("http://h/x.tar.gz", allow_http=True)
    for bad in ("http://h/x", "file:///etc/passwd", "ftp://h/x", "https:///x", "https://u:p@h/x"):
        with pytest.raises(DownloadError):
            check_url(bad, allow_http=bad != "http://h/x")
    with pytest.raises(DownloadError, match="ALLOW_HTTP"):
        download("http://127.0.0.1:9/x", Path("/nonexistent/x"), sha256="0" * 64, cfg=OtaConfig())


@contextmanager
def _over_tls(server: socketserver.TCPServer, ca: Authority) -> Iterator[str]:
    """Serve ``server`` over TLS (certificate for localhost from ``ca``) in a thread; yield its https URL."""
    cert, key = ca.issue("localhost", server=True)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"https://localhost:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _redirector(location: str, asked: list[str]) -> http.server.HTTPServer:
    """A server that answers every GET with ``302 Location: <location><path>`` and records the path."""

    class Redirect(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            self.send_response(302)
            self.send_header("Location", location + self.path)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    return http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirect)


def test_https_never_redirects_to_http_even_when_http_is_allowed(site: tuple[Path, bytes, str], tmp_path: Path) -> None:
    root, data, sha = site
    ca = Authority(tmp_path / "pki")
    trust = ssl.create_default_context(cafile=ca.ca_file)
    asked: list[str] = []
    with serving(root, faults=True) as plain, _over_tls(_redirector(plain.url, asked), ca) as url:
        with pytest.raises(DownloadError, match="never follows a redirect to plain http"):
            _fetch(f"{url}/b.tar.gz", tmp_path / "b.tar.gz", sha, _cfg(allow_http=True), context=trust)
        assert asked == ["/b.tar.gz"]  # refused at once, not retried
        assert plain.requests == []  # the http server was never contacted
        assert not list(tmp_path.glob("b.tar.gz*"))
        # The same http URL given directly is fine on an ALLOW_HTTP fleet: only the downgrade is refused.
        assert _fetch(f"{plain.url}/b.tar.gz", tmp_path / "b.tar.gz", sha).read_bytes() == data


def test_https_redirects_to_https_are_followed(site: tuple[Path, bytes, str], tmp_path: Path) -> None:
    root, data, sha = site
    ca = Authority(tmp_path / "pki")
    trust = ssl.create_default_context(cafile=ca.ca_file)
    asked: list[str] = []
    with _over_tls(make_server(root), ca) as files, _over_tls(_redirector(files, asked), ca) as url:
        out = _fetch(f"{url}/b.tar.gz", tmp_path / "b.tar.gz", sha, _cfg(allow_http=False), context=trust)
    assert out.read_bytes() == data and asked == ["/b.tar.gz"]
