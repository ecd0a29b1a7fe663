"""The LAN bundle server: byte ranges, HEAD, and nothing outside the folder."""

from __future__ import annotations

import http.client
from pathlib import Path

import pytest

from edge_node.bundle.archive import pack
from edge_node.ota.download import sha256_file
from edge_node.ota.serve import describe_bundles, parse_range
from tests.support.bundles import make_tiny_bundle
from tests.support.ota_http import serving


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("bytes=0-", (0, 99)),
        ("bytes=10-19", (10, 19)),
        ("bytes=90-500", (90, 99)),
        ("bytes=-10", (90, 99)),
        ("bytes=100-", False),
        ("bytes=20-10", False),
        ("bytes=-0", False),
        ("bytes=0-1,5-6", None),
        ("items=0-1", None),
    ],
)
def test_parse_range(header: str | None, expected: object) -> None:
    assert parse_range(header, 100) == expected


def _get(
    url: str, path: str, headers: dict[str, str] | None = None, method: str = "GET"
) -> tuple[int, dict[str, str], bytes]:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    conn.request(method, path, headers=headers or {})
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, dict(resp.getheaders()), body


def test_ranges_head_and_confinement(tmp_path: Path) -> None:
    root = tmp_path / "site"
    root.mkdir()
    data = bytes(range(256)) * 40
    (root / "b.tar.gz").write_bytes(data)
    (root / ".hidden").write_bytes(b"x")
    (root / "sub").mkdir()
    (tmp_path / "secret").write_bytes(b"secret")
    (root / "link").symlink_to(tmp_path / "secret")
    with serving(root) as srv:
        status, headers, body = _get(srv.url, "/b.tar.gz")
        assert (status, body, headers["Accept-Ranges"]) == (200, data, "bytes")
        status, headers, body = _get(srv.url, "/b.tar.gz", {"Range": "bytes=1000-"})
        assert (status, body, headers["Content-Range"]) == (206, data[1000:], f"bytes 1000-{len(data) - 1}/{len(data)}")
        status, headers, _ = _get(srv.url, "/b.tar.gz", {"Range": f"bytes={len(data)}-"})
        assert (status, headers["Content-Range"]) == (416, f"bytes */{len(data)}")
        status, headers, body = _get(srv.url, "/b.tar.gz", method="HEAD")
        assert (status, body, headers["Content-Length"]) == (200, b"", str(len(data)))
        for path in ("/.hidden", "/sub/", "/", "/link", "/../secret", "/%2e%2e/secret", "/nope"):
            assert _get(srv.url, path)[0] == 404, path


def test_describe_bundles_prints_ready_commands(tmp_path: Path) -> None:
    out = tmp_path / "site"
    out.mkdir()
    archive = pack(make_tiny_bundle(tmp_path / "b", version="4.2.0", resolutions=(64,)), out / "tiny.tar.gz")
    (line,) = describe_bundles(out, "http://pi:8000")
    assert line == (
        f"http://pi:8000/tiny.tar.gz --sha256 {sha256_file(archive)} --size {archive.stat().st_size} --version 4.2.0"
    )
