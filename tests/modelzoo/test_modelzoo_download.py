"""Checkpoint downloads from a real HTTP server on loopback: sha256-pinned, cached, loaded."""

from __future__ import annotations

import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_node.errors import DownloadError
from edge_node.modelzoo.download import fetch

pytest.importorskip("torch")
pytest.importorskip("timm")

import torch

from edge_node.modelzoo.archs import create_model, get_arch
from edge_node.modelzoo.export import torch_logits
from edge_node.modelzoo.weights import load_weights


class _Server:
    def __init__(self, root: Path) -> None:
        self.requests: list[str] = []
        outer = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args: Any, **kwargs: Any) -> None:  # passed through to the base class as given
                super().__init__(*args, directory=str(root), **kwargs)

            def do_GET(self) -> None:
                outer.requests.append(self.path)
                super().do_GET()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[_Server]:
    root = tmp_path / "www"
    root.mkdir()
    srv = _Server(root)
    try:
        yield srv
    finally:
        srv.close()


@pytest.fixture
def checkpoint(server: _Server, tmp_path: Path) -> tuple[str, str, torch.nn.Module]:
    torch.manual_seed(3)
    model = create_model(get_arch("mobilenetv3_small_100"))
    path = tmp_path / "www" / "mnv3s.pth"
    torch.save(model.state_dict(), path)
    return f"{server.url}/mnv3s.pth", hashlib.sha256(path.read_bytes()).hexdigest(), model


def test_download_is_checked_cached_and_loaded(
    server: _Server, checkpoint: tuple[str, str, torch.nn.Module], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    url, sha, source = checkpoint
    arch = get_arch("mobilenetv3_small_100")
    model = create_model(arch)
    assert load_weights(model, arch, url, sha256=sha, progress=False) == f"{url}#sha256={sha}"
    cached = list((tmp_path / "cache" / "ghostpi" / "checkpoints").iterdir())
    assert [p.name for p in cached] == [f"{sha[:16]}-mnv3s.pth"]
    x = np.random.default_rng(0).standard_normal((1, 3, 96, 96)).astype(np.float32)
    np.testing.assert_array_equal(torch_logits(model, [x]), torch_logits(source, [x]))
    # a second use is served from the cache
    load_weights(create_model(arch), arch, url, sha256=sha, progress=False)
    assert server.requests == ["/mnv3s.pth"]


def test_wrong_sha256_is_refused_and_not_cached(checkpoint: tuple[str, str, torch.nn.Module], tmp_path: Path) -> None:
    url = checkpoint[0]
    wrong = hashlib.sha256(b"something else").hexdigest()
    with pytest.raises(DownloadError, match="refusing it"):
        fetch(url, wrong, cache=tmp_path / "c", progress=False)
    assert list((tmp_path / "c").iterdir()) == []


def test_url_needs_a_sha256_and_errors_are_clear(server: _Server, tmp_path: Path) -> None:
    arch = get_arch("mobilenetv3_small_100")
    with pytest.raises(DownloadError, match="needs --weights-sha256"):
        load_weights(create_model(arch), arch, f"{server.url}/x.pth")
    with pytest.raises(DownloadError, match="HTTP 404"):
        fetch(f"{server.url}/missing.pth", "0" * 64, cache=tmp_path / "c", progress=False)
    with pytest.raises(DownloadError, match="64 hex digits"):
        fetch(f"{server.url}/x.pth", "abc", cache=tmp_path / "c", progress=False)


def test_unreachable_server_is_retried_then_reported(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DownloadError, match="cannot download"):
        fetch(f"http://127.0.0.1:{port}/x.pth", "0" * 64, cache=tmp_path / "c", attempts=2, progress=False)
