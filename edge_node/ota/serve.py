"""``edge-node model serve DIR``: a small LAN HTTP server for bundle archives, with byte ranges.

Nodes resume interrupted downloads with ``Range: bytes=N-``, so the server answers single ranges with
``206 Partial Content``; multiple ranges get the whole file (allowed by RFC 9110). It serves regular files
below ``DIR`` only: no listings, no dot files, no symlinks out of the folder.
"""

from __future__ import annotations

import contextlib
import http.server
import logging
import os
import re
import socketserver
import tarfile
from functools import partial
from pathlib import Path
from typing import IO

from edge_node.bundle.manifest import MANIFEST, Manifest
from edge_node.errors import BundleError
from edge_node.ota.download import sha256_file

__all__ = ["RangeRequestHandler", "describe_bundles", "make_server", "parse_range", "serve_bundles"]

log = logging.getLogger(__name__)

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def parse_range(header: str | None, size: int) -> tuple[int, int] | bool | None:
    """``(first, last)`` for one satisfiable range, None to send the whole file, False if unsatisfiable."""
    if not header:
        return None
    match = _RANGE.match(header.strip())
    if match is None:  # several ranges or another unit: ignore the header
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # suffix: the last N bytes
        n = int(last)
        return (max(0, size - n), size - 1) if n else False
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or end < start:
        return False
    return start, end


class RangeRequestHandler(http.server.SimpleHTTPRequestHandler):
    """GET/HEAD of files with single-range support; everything else is 404/405."""

    server_version = "ghostpi-bundles/1"
    protocol_version = "HTTP/1.1"

    def list_directory(self, path: str | os.PathLike[str]) -> None:
        self.send_error(404, "Not found")
        return None

    def send_head(self) -> IO[bytes] | None:  # type: ignore[override]
        path = Path(self.translate_path(self.path))
        root = Path(self.directory).resolve()
        try:
            real = path.resolve(strict=True)
        except OSError:
            real = None
        if real is None or not real.is_file() or root not in real.parents or real.name.startswith("."):
            self.send_error(404, "Not found")
            return None
        fh = real.open("rb")
        size = os.fstat(fh.fileno()).st_size
        wanted = parse_range(self.headers.get("Range"), size)
        if wanted is False:
            fh.close()
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        first, last = wanted if isinstance(wanted, tuple) else (0, size - 1)
        self.send_response(206 if isinstance(wanted, tuple) else 200)
        if isinstance(wanted, tuple):
            self.send_header("Content-Range", f"bytes {first}-{last}/{size}")
        self.send_header("Content-Type", "application/gzip" if real.name.endswith("gz") else "application/octet-stream")
        self.send_header("Content-Length", str(last - first + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Last-Modified", self.date_time_string(int(os.fstat(fh.fileno()).st_mtime)))
        self.end_headers()
        fh.seek(first)
        self._remaining = last - first + 1
        return fh

    def copyfile(self, source: IO[bytes], outputfile: IO[bytes]) -> None:  # type: ignore[override]
        remaining = self._remaining
        try:
            while remaining > 0:
                chunk = source.read(min(64 * 1024, remaining))
                if not chunk:
                    break
                outputfile.write(chunk)
                remaining -= len(chunk)
        except (BrokenPipeError, ConnectionResetError):  # the client went away; it may resume later
            log.info("%s disconnected with %d bytes left", self.address_string(), remaining)
            self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:
        log.info("%s %s", self.address_string(), format % args)


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def make_server(directory: Path, host: str = "127.0.0.1", port: int = 0) -> socketserver.TCPServer:
    """A ready, not yet serving server; ``port=0`` picks a free port (see ``server.server_address``)."""
    if not directory.is_dir():
        raise BundleError(f"{directory} is not a directory; give the folder holding the .tar.gz bundles")
    handler = partial(RangeRequestHandler, directory=str(directory.resolve()))
    try:
        return _Server((host, port), handler)
    except OSError as exc:
        raise BundleError(f"cannot listen on {host}:{port}: {exc}; pick another --port") from exc


def _archive_version(path: Path) -> str:
    """The manifest version inside an archive, or '?' when it cannot be read."""
    try:
        with tarfile.open(path, "r:gz") as tar:
            member = tar.getmember(MANIFEST)
            fh = tar.extractfile(member) if member.isfile() and member.size < 1 << 20 else None
            return Manifest.model_validate_json(fh.read()).version if fh else "?"
    except (tarfile.TarError, KeyError, OSError, ValueError):
        return "?"


def describe_bundles(directory: Path, base_url: str) -> list[str]:
    """One ``URL --sha256 H --size N --version V`` line per archive, for ``edge-node ctl update-model``."""
    return [
        f"{base_url}/{path.name} --sha256 {sha256_file(path)} --size {path.stat().st_size} "
        f"--version {_archive_version(path)}"
        for path in sorted(directory.glob("*.tar.gz"))
    ]


def serve_bundles(directory: Path, host: str, port: int) -> None:
    """Serve ``directory`` until interrupted, printing each archive's URL and sha256 first."""
    with make_server(directory, host, port) as server:
        bound_host, bound_port = str(server.server_address[0]), int(server.server_address[1])
        shown = os.uname().nodename if host in ("", "0.0.0.0", "::") else bound_host
        base = f"http://{shown}:{bound_port}"
        print(f"serving {directory} at {base}/ (Ctrl-C to stop)", flush=True)
        for line in describe_bundles(directory, base):
            print(f"  {line}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            server.serve_forever()
