"""A real loopback HTTP server for OTA tests: the bundle server, plus scripted faults per request.

``FaultServer.faults`` is consumed one entry per GET; ``None`` serves normally. Faults:
``cut`` (half the body, then close), ``stall`` (half the body, then silence), ``norange`` (ignore Range),
``badrange`` (206 with a Content-Range that does not continue the file), ``nolength`` (no Content-Length,
close-delimited body), ``500`` (server error).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from edge_node.ota.serve import RangeRequestHandler, make_server

__all__ = ["FaultServer", "serving"]


@dataclass
class FaultServer:
    url: str
    faults: list[str | None] = field(default_factory=list)
    requests: list[tuple[str, str | None, int]] = field(default_factory=list)  # (path, Range, status)
    stall_seconds: float = 3.0


class _FaultHandler(RangeRequestHandler):
    control: FaultServer

    def do_GET(self) -> None:
        fault = self.control.faults.pop(0) if self.control.faults else None
        self._fault = fault
        if fault == "500":
            self.send_error(500, "scripted failure")
            return
        if fault == "norange" and "Range" in self.headers:
            del self.headers["Range"]
        if fault == "nolength":
            self.protocol_version = "HTTP/1.0"
        super().do_GET()

    def send_response(self, code: int, message: str | None = None) -> None:
        self.control.requests.append((self.path, self.headers.get("Range"), code))
        super().send_response(code, message)

    def send_header(self, keyword: str, value: str) -> None:
        if self._fault == "nolength" and keyword == "Content-Length":
            return
        if self._fault == "badrange" and keyword == "Content-Range":
            first, rest = value.split(" ", 1)[1].split("-", 1)
            value = f"bytes {int(first) + 1}-{rest}"
        super().send_header(keyword, value)

    # typeshed's copyfile takes str or bytes streams; this server, like RangeRequestHandler, sends bytes only.
    def copyfile(self, source: IO[bytes], outputfile: IO[bytes]) -> None:  # type: ignore[override]
        if self._fault in ("cut", "stall"):
            half = max(1, self._remaining // 2)
            outputfile.write(source.read(half))
            outputfile.flush()
            if self._fault == "stall":
                time.sleep(self.control.stall_seconds)
            self.close_connection = True
            return
        super().copyfile(source, outputfile)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def serving(directory: Path, *, faults: bool = False) -> Iterator[FaultServer]:
    """Serve ``directory`` on a free loopback port in a thread; yields the control object."""
    server = make_server(directory)
    control = FaultServer(url=f"http://127.0.0.1:{server.server_address[1]}")
    if faults:
        server.RequestHandlerClass = _bind(directory, control)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield control
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _bind(directory: Path, control: FaultServer) -> type[_FaultHandler]:
    class Bound(_FaultHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:  # passed through to the base class as given
            self.control = control
            self._fault = None
            super().__init__(*args, directory=str(directory.resolve()), **kwargs)

    return Bound
