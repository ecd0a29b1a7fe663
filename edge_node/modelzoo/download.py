"""Checkpoint downloads: sha256-pinned and cached, through the node's own resumable downloader.

The transfer itself (timeouts, Range resume, tenacity retries, size cap, hash check) is
``edge_node.ota.download``; this module only adds the cache and the progress bar. A file is only ever
moved into the cache after its sha256 matched, so a cache hit is trusted as is.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

from edge_node.config import OtaConfig, cache_dir
from edge_node.errors import DownloadError
from edge_node.modelzoo.progress import download_progress
from edge_node.ota.download import download

__all__ = ["MAX_CHECKPOINT_BYTES", "checkpoint_cache", "fetch"]

log = logging.getLogger(__name__)

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
MAX_CHECKPOINT_BYTES = 4 << 30  # larger than any checkpoint of the supported architectures


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
    name = re.sub(r"[^A-Za-z0-9._-]", "_", PurePosixPath(urlsplit(url).path).name) or "checkpoint"
    folder = cache or checkpoint_cache()
    target = folder / f"{sha256[:16]}-{name}"
    if target.is_file():
        log.info("using cached %s", target)
        return target
    folder.mkdir(parents=True, exist_ok=True)
    cfg = OtaConfig(
        allow_http=True,  # checkpoints are pinned by sha256, so plain http cannot smuggle in other bytes
        max_bundle_bytes=MAX_CHECKPOINT_BYTES,
        download_timeout=timeout,
        download_attempts=attempts,
    )
    with download_progress(progress) as bar:
        task = bar.add_task(f"downloading {name}", total=None)
        try:
            download(
                url,
                target,
                sha256=sha256,
                cfg=cfg,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
                backoff=0.5,
            )
        except DownloadError as exc:
            raise DownloadError(f"cannot download checkpoint {url}: {exc}") from exc
    log.info("downloaded %s to %s", url, target)
    return target
