"""Download one bundle archive into the staging area: resumable, bounded, retried, hash-checked.

Bytes land in ``<dest>.part``; a retry asks for the rest with ``Range`` and keeps the bytes only when the
server answers ``206`` with a matching ``Content-Range`` (anything else starts over). Every socket wait is
bounded by ``download_timeout``; the archive may never exceed the declared size, ``Content-Length`` or
``max_bundle_bytes``. The finished file is renamed to ``dest`` only when its sha256 matches.

Uses the standard library (urllib) so the Pi runtime needs no extra HTTP dependency.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import os
import re
import socket
import ssl
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from edge_node import __version__
from edge_node.bundle.fsutil import fsync_dir
from edge_node.bundle.manifest import file_digest
from edge_node.config import OtaConfig
from edge_node.errors import DownloadError

__all__ = ["CHUNK", "Interrupter", "Progress", "check_url", "download", "partial_path", "sha256_file"]

log = logging.getLogger(__name__)

CHUNK = 64 * 1024
Progress = Callable[[int, int | None], None]  # (bytes on disk, expected total or None)
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
_RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}


class _Retry(DownloadError):
    """A transient failure: the next attempt resumes (or restarts) the download."""


class _Cancelled(DownloadError):
    pass


def check_url(url: str, *, allow_http: bool) -> str:
    """Accept ``https://host/...`` (and ``http://`` only when allowed); return the URL."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise DownloadError(f"model URL {url!r} is not an https:// URL")
    if parts.scheme == "http" and not allow_http:
        raise DownloadError(
            f"model URL {url!r} uses plain http; serve bundles over https or set EDGE_OTA__ALLOW_HTTP=true "
            "on a trusted LAN (the bundle signature still protects the content)"
        )
    if parts.username or parts.password:
        raise DownloadError("model URLs must not embed credentials")
    return url


def partial_path(dest: Path) -> Path:
    """Where the bytes of a download into ``dest`` accumulate until its sha256 matches."""
    return dest.with_name(dest.name + ".part")


def sha256_file(path: Path) -> str:
    return file_digest(path).sha256


class Interrupter:
    """Lets another thread break a download out of a blocking socket read at once (node shutdown), instead of
    waiting up to ``download_timeout`` for the read to time out."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._interrupted = False

    def interrupt(self) -> None:
        with self._lock:
            self._interrupted = True
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def track(self, sock: socket.socket) -> None:
        with self._lock:
            if self._interrupted:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            self._sockets.add(sock)

    def forget(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.discard(sock)

    def handlers(self, context: ssl.SSLContext) -> list[urllib.request.BaseHandler]:
        """urllib handlers whose connections register their sockets here."""
        interrupter = self

        def tracked(base: type[http.client.HTTPConnection]) -> type[http.client.HTTPConnection]:
            class Tracked(base):  # type: ignore[valid-type,misc]
                def connect(self) -> None:
                    super().connect()
                    interrupter.track(self.sock)

                def close(self) -> None:
                    if self.sock is not None:
                        interrupter.forget(self.sock)
                    super().close()

            return Tracked

        http_conn, https_conn = tracked(http.client.HTTPConnection), tracked(http.client.HTTPSConnection)

        class HTTP(urllib.request.HTTPHandler):
            def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
                return self.do_open(http_conn, req)

        class HTTPS(urllib.request.HTTPSHandler):
            def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
                return self.do_open(https_conn, req, context=context)

        return [HTTP(), HTTPS()]


class _SchemeGuard(urllib.request.HTTPRedirectHandler):
    """Follow redirects only to URLs that ``check_url`` accepts, and never from https to http: an
    ``EDGE_OTA__ALLOW_HTTP`` fleet may fetch http URLs it was given, not be moved off TLS by a server."""

    def __init__(self, allow_http: bool) -> None:
        self.allow_http = allow_http

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: http.client.HTTPMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        check_url(newurl, allow_http=self.allow_http)
        if urllib.parse.urlsplit(req.full_url).scheme == "https" and urllib.parse.urlsplit(newurl).scheme != "https":
            raise DownloadError(
                f"{req.full_url} redirects to {newurl}: a download that started on https never follows a redirect "
                "to plain http; fix the server's redirect, or give the node the final URL"
            )
        return super().redirect_request(req, fp, code, msg, headers, newurl)


@dataclass
class _Job:
    url: str
    part: Path
    sha256: str
    cap: int  # hard byte limit: min(declared size, max_bundle_bytes)
    size: int | None
    timeout: float
    opener: urllib.request.OpenerDirector
    progress: Progress | None
    cancel: threading.Event | None
    resumed: bool = False

    def attempt(self) -> None:
        offset = self.part.stat().st_size if self.part.exists() else 0
        if offset > self.cap:
            offset = self._restart("the partial file is larger than allowed")
        self.resumed = offset > 0
        if self.size is not None and offset == self.size:
            return  # complete from an earlier attempt or run; the hash check decides
        request = urllib.request.Request(self.url, headers={"User-Agent": f"ghostpi-edge-node/{__version__}"})
        if offset:
            request.add_header("Range", f"bytes={offset}-")
        try:
            with self.opener.open(request, timeout=self.timeout) as resp:
                offset, total = self._accept(resp, offset)
                self._copy(resp, offset, total)
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and offset:
                self._restart("the server cannot resume")
                raise _Retry("HTTP 416 when resuming; starting over") from exc
            if exc.code in _RETRY_STATUS:
                raise _Retry(f"HTTP {exc.code} {exc.reason} from {self.url}") from exc
            raise DownloadError(f"HTTP {exc.code} {exc.reason} from {self.url}: check the URL") from exc
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, ssl.SSLError):
                raise DownloadError(f"TLS error talking to {self.url}: {exc.reason}") from exc
            raise _Retry(f"cannot reach {self.url}: {exc.reason}") from exc
        except TimeoutError as exc:
            raise _Retry(f"no data from {self.url} for {self.timeout:.0f}s") from exc
        except (http.client.HTTPException, ConnectionError, OSError) as exc:
            raise _Retry(f"connection to {self.url} broke: {exc!r}") from exc

    def _accept(self, resp: http.client.HTTPResponse, offset: int) -> tuple[int, int | None]:
        """Check status and headers; return (offset to write at, expected total size)."""
        length = resp.headers.get("Content-Length")
        body = int(length) if length and length.isdigit() else None
        if offset and resp.status == 206:
            match = _CONTENT_RANGE.match(resp.headers.get("Content-Range", "").strip())
            if match is None or int(match.group(1)) != offset:
                self._restart("the server's Content-Range does not continue the partial file")
                raise _Retry("server answered a resume with a different range; starting over")
            total = None if match.group(3) == "*" else int(match.group(3))
        elif resp.status == 200:
            if offset:
                log.info("server ignored the Range request; downloading %s from the start", self.url)
                offset = self._restart("the server does not resume")
            total = body
        else:
            raise DownloadError(f"unexpected HTTP {resp.status} from {self.url}")
        if total is not None:
            if self.size is not None and total != self.size:
                raise DownloadError(f"server says the bundle has {total} bytes, the command said {self.size}")
            if total > self.cap:
                raise DownloadError(f"bundle is {total} bytes, over the {self.cap}-byte limit; refusing it")
        return offset, total if total is not None else self.size

    def _copy(self, resp: http.client.HTTPResponse, offset: int, total: int | None) -> None:
        done = offset
        with self.part.open("r+b" if offset else "wb") as out:
            out.seek(offset)
            out.truncate()
            while chunk := resp.read1(CHUNK):  # what has arrived: a stall loses nothing already received
                if self.cancel is not None and self.cancel.is_set():
                    raise _Cancelled("download cancelled")
                done += len(chunk)
                if done > self.cap:
                    raise DownloadError(f"bundle exceeds the {self.cap}-byte limit; refusing it")
                out.write(chunk)
                if self.progress is not None:
                    self.progress(done, total)
            out.flush()
            os.fsync(out.fileno())
        if total is not None and done != total:
            raise _Retry(f"connection closed after {done} of {total} bytes")

    def _restart(self, why: str) -> int:
        log.info("discarding partial download %s: %s", self.part.name, why)
        self.part.unlink(missing_ok=True)
        self.resumed = False
        return 0


def download(
    url: str,
    dest: Path,
    *,
    sha256: str,
    cfg: OtaConfig,
    size: int | None = None,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
    context: ssl.SSLContext | None = None,
    interrupter: Interrupter | None = None,
    backoff: float = 1.0,
) -> Path:
    """Fetch ``url`` to ``dest`` (blocking; run it in a thread). Raise DownloadError when it cannot.

    A ``dest.part`` left by an earlier run is resumed. On a hash mismatch the partial file is deleted.
    Retries wait ``backoff`` seconds, doubling up to 30 s, plus up to ``backoff`` of random jitter.
    """
    check_url(url, allow_http=cfg.allow_http)
    if size is not None and size > cfg.max_bundle_bytes:
        raise DownloadError(
            f"bundle of {size} bytes exceeds EDGE_OTA__MAX_BUNDLE_BYTES={cfg.max_bundle_bytes}; refusing it"
        )
    handlers = (interrupter or Interrupter()).handlers(context or ssl.create_default_context())
    opener = urllib.request.build_opener(*handlers, _SchemeGuard(cfg.allow_http))
    job = _Job(
        url=url,
        part=partial_path(dest),
        sha256=sha256.lower(),
        cap=min(size or cfg.max_bundle_bytes, cfg.max_bundle_bytes),
        size=size,
        timeout=cfg.download_timeout,
        opener=opener,
        progress=progress,
        cancel=cancel,
    )
    retrying = Retrying(
        stop=stop_after_attempt(cfg.download_attempts),
        wait=wait_exponential_jitter(initial=backoff, max=30.0, jitter=backoff),
        retry=retry_if_exception_type(_Retry),
        before_sleep=_log_retry,
        sleep=_sleeper(cancel),
        reraise=True,
    )
    try:
        for attempt in retrying:
            with attempt:
                job.attempt()
                _check_hash(job)
    except _Retry as exc:  # the partial file stays for the next try to resume
        if cancel is not None and cancel.is_set():
            raise _Cancelled("download cancelled") from exc
        raise DownloadError(f"download failed after {cfg.download_attempts} attempt(s): {exc}") from exc
    except _Cancelled:  # shutdown: the partial file stays, so the next run resumes
        raise
    except DownloadError:
        job.part.unlink(missing_ok=True)
        raise
    os.replace(job.part, dest)
    fsync_dir(dest.parent)
    return dest


def _check_hash(job: _Job) -> None:
    actual = sha256_file(job.part)
    if actual == job.sha256:
        return
    resumed = job.resumed
    job._restart("sha256 mismatch")
    if resumed:  # the resumed tail may not belong to the same file: one clean retry from zero
        raise _Retry("sha256 mismatch after resuming; downloading again from the start")
    raise DownloadError(f"the downloaded bundle has sha256 {actual}, the command says {job.sha256}; refusing it")


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    delay = state.next_action.sleep if state.next_action else 0.0
    log.warning("download attempt %d failed (%s); retrying in %.1fs", state.attempt_number, exc, delay)


def _sleeper(cancel: threading.Event | None) -> Callable[[float], None]:
    def sleep(seconds: float) -> None:
        if cancel is not None and cancel.wait(seconds):
            raise _Cancelled("download cancelled")
        if cancel is None:
            threading.Event().wait(seconds)

    return sleep
