"""Hand-made ``.tar.gz`` archives for the tests of what a node refuses: any member order, unlisted or
mis-sized members, and a million directory headers written in well under a second."""

from __future__ import annotations

import gzip
import io
import struct
import tarfile
import zlib
from collections.abc import Sequence
from pathlib import Path

__all__ = ["Entry", "million_directories", "write_archive"]

Entry = tuple[str, bytes | None]  # (name, data); None makes a directory


def write_archive(path: Path, entries: Sequence[Entry], *, sizes: dict[str, int] | None = None) -> Path:
    """A gzipped tar of ``entries`` in the order given. ``sizes`` makes a member's header declare another size
    than its data has (the data is then cut or zero-padded to it, so the archive stays well formed)."""
    with (
        path.open("wb") as raw,
        gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for name, data in entries:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
                continue
            size = (sizes or {}).get(name, len(data))
            info.size = size
            tar.addfile(info, io.BytesIO(data[:size].ljust(size, b"\0")))
    return path


def million_directories(path: Path, count: int = 1_000_000) -> Path:
    """A valid .tar.gz of ``count`` directory headers ("d/") and nothing else: 512 MB of tar, ~0.5 MB of gzip.

    Written without compressing 512 MB: one chunk of headers is deflated once, ending in a full flush (which
    resets the compressor's history), so that the compressed chunk can be repeated as often as needed."""
    info = tarfile.TarInfo("d/")
    info.type = tarfile.DIRTYPE
    header = info.tobuf(tarfile.USTAR_FORMAT)
    per_chunk = 4096
    chunk = header * per_chunk
    full, rest = divmod(count, per_chunk)
    tail = header * rest + bytes(1024)  # the end-of-archive blocks
    crc = 0
    with path.open("wb") as out:
        out.write(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff")  # gzip header: deflate, no name, mtime 0
        block = _deflated(chunk)
        for _ in range(full):
            out.write(block)
            crc = zlib.crc32(chunk, crc)
        out.write(_deflated(tail))
        out.write(zlib.compressobj(wbits=-15).flush())  # the final (empty) block
        crc = zlib.crc32(tail, crc)
        out.write(struct.pack("<II", crc, (len(chunk) * full + len(tail)) & 0xFFFFFFFF))
    return path


def _deflated(data: bytes) -> bytes:
    squeeze = zlib.compressobj(9, zlib.DEFLATED, -15)
    return squeeze.compress(data) + squeeze.flush(zlib.Z_FULL_FLUSH)
