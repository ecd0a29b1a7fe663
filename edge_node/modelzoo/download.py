"""Checkpoint downloads: streamed with progress, time-limited, sha256-pinned and cached.

A file is only ever moved into the cache after its sha256 matched, so a cache hit is trusted as is.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential

from edge_node.config import cache_dir
from edge_node.errors import DownloadError
from edge_node.modelzoo.progress import download_progress

__all__ = ["checkpoint_cache", "fetch"]

log = logging.getLogger(__name__)

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 16


class _Transient(DownloadError):
    """A network failure worth retrying (timeouts, resets, 5xx)."""


def checkpoint_cache() -> Path:
    return cache_dir() / "checkpoints"


def fetch(
    url: str,
    sha256: str,
    *,
    cache: Path | None = None,
    timeout: float = 30.0,
    attempts: int = 3,
    progress: bool = True,
) -> Path:
    """Return a cached local copy of ``url`` whose content hashes to ``sha256``; download it if needed."""
    sha256 = sha256.strip().lower()
    if not _SHA256.match(sha256):
        raise DownloadError(f"--weights-sha256 must be 64 hex digits, got {sha256!r}")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise DownloadError(f"{url} is not an http(s) URL")
    name = re.sub(r"[^A-Za-z0-9._-]", "_", PurePosixPath(parts.path).name) or "checkpoint"
    folder = cache or checkpoint_cache()
    target = folder / f"{sha256[:16]}-{name}"
    if target.is_file():
        log.info("using cached %s", target)
        return target
    folder.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + f".{os.getpid()}.part")

    @retry(
        retry=retry_if_exception_type(_Transient),
        stop=stop_after_attempt(attempts),
        wait=wait_exponential(multiplier=0.5, max=8),
        reraise=True,
    )
    def attempt() -> str:
        return _download(url, part, timeout=timeout, progress=progress)

    try:
        digest = attempt()
        if digest != sha256:
            raise DownloadError(
                f"{url} has sha256 {digest}, expected {sha256}: refusing it. Check the URL and the "
                "--weights-sha256 value."
            )
        os.replace(part, target)
    finally:
        part.unlink(missing_ok=True)
    log.info("downloaded %s to %s", url, target)
    return target


def _download(url: str, out: Path, *, timeout: float, progress: bool) -> str:
    """Stream ``url`` to ``out``; return its sha256. ``timeout`` bounds the connect and every read."""
    digest = hashlib.sha256()
    request = urllib.request.Request(url, headers={"User-Agent": "ghostpi-edge-node"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response, out.open("wb") as fh:
            total = int(response.headers.get("Content-Length") or 0) or None
            with download_progress(progress) as bar:
                task = bar.add_task(f"downloading {PurePosixPath(urlsplit(url).path).name}", total=total)
                while chunk := response.read(_CHUNK):
                    fh.write(chunk)
                    digest.update(chunk)
                    bar.advance(task, len(chunk))
    except urllib.error.HTTPError as exc:
        if exc.code >= 500:
            raise _Transient(f"{url}: server error {exc.code} {exc.reason}") from exc
        raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        raise _Transient(f"cannot download {url}: {getattr(exc, 'reason', exc)}; check the network") from exc
    return digest.hexdigest()
