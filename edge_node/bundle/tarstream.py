"""A streaming reader for the tar subset that bundles use, with every resource bounded.

Why not ``tarfile``: it keeps every header it has read in ``TarFile.members`` (in stream mode too), and it
reads a pax or GNU long-name header's body whole, whatever size the header declares. An archive from the
network could exhaust a Pi either way before anything in it was checked (a gzip of a million directory
headers is 5 MB). This reader holds one header at a time, counts every header (directories and extended
headers included) against ``max_members``, refuses extended headers over ``MAX_EXTENDED`` bytes, refuses
links, devices and unsafe paths, and reads a file's data only as far as its consumer asks.

Supported: ustar, GNU and pax headers (pax ``path`` and ``size`` records, GNU long names), regular files and
directories. The end is the first all-zero block.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Literal, Protocol

from edge_node.errors import BundleError

__all__ = ["BLOCK", "MAX_EXTENDED", "Member", "Readable", "members", "safe_parts"]

BLOCK = 512
MAX_EXTENDED = 64 * 1024  # a pax or GNU long-name header body; real ones are a few hundred bytes
_ZERO = bytes(BLOCK)
_FILE_TYPES = (b"0", b"\0")
_DIR_TYPE = b"5"
_EXTENDED_TYPES = (b"x", b"g", b"L")  # pax per-file, pax global, GNU long name
_POSIX_MAGIC = b"ustar\x0000"


class Readable(Protocol):
    """A binary stream (``gzip.GzipFile``, a file, ``io.BytesIO``)."""

    def read(self, size: int = -1, /) -> bytes: ...


@dataclass(slots=True)
class Member:
    """One archive entry. For a file, ``read`` returns its data (only up to ``size``), in pieces."""

    name: str  # normalised relative POSIX path; "" for the archive's root directory (".")
    kind: Literal["file", "dir"]
    size: int
    _stream: Readable = field(repr=False)
    _left: int = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._left = self.size

    def read(self, limit: int = 1 << 20) -> bytes:
        """Up to ``limit`` more bytes of the file; b"" at its end. A truncated archive raises BundleError."""
        if self._left == 0:
            return b""
        chunk = self._stream.read(min(limit, self._left))
        if not chunk:
            raise BundleError(f"the archive ends inside {self.name!r}; it is truncated")
        self._left -= len(chunk)
        return chunk

    def _skip(self) -> None:
        """Read past what the consumer left and the padding to the next header."""
        while self.read():
            pass
        _read_exact(self._stream, -self.size % BLOCK)


def safe_parts(name: str) -> tuple[str, ...]:
    """The path components of an archive name; raise BundleError for anything that could leave the folder."""
    parts = PurePosixPath(name).parts  # "." and "./x" (tar -C dir .) normalise to () and ("x",)
    if name.startswith(("/", "\\")) or ".." in parts or "\\" in name:
        raise BundleError(f"archive entry {name!r} has an unsafe path; refusing the archive")
    return parts


def members(stream: Readable, *, max_members: int) -> Iterator[Member]:
    """Yield the entries of the uncompressed tar ``stream`` one at a time; raise BundleError on anything
    unsafe, malformed or beyond ``max_members`` headers. Data a consumer did not read is skipped."""
    count = 0
    extended: dict[str, str] = {}
    while True:
        header = _read_exact(stream, BLOCK)
        if header == _ZERO:
            return
        count += 1
        if count > max_members:
            raise BundleError(
                f"the archive has more than {max_members} entries (directories and extended headers count); "
                "refusing it: a bundle has a few dozen files"
            )
        _check_checksum(header)
        kind, size = header[156:157], _number(header[124:136], "size")
        if kind in _EXTENDED_TYPES:
            if size > MAX_EXTENDED:
                raise BundleError(f"an extended tar header declares {size} bytes (at most {MAX_EXTENDED}); refusing it")
            body = _read_exact(stream, size + (-size % BLOCK))[:size]
            if kind == b"x":
                extended.update(_pax_records(body))
            elif kind == b"L":
                extended["path"] = _text(body.split(b"\0", 1)[0])
            continue  # a pax global header ("g") changes nothing this reader uses
        name = extended.pop("path", None) or _header_name(header)
        if "size" in extended:
            size = _decimal(extended.pop("size"), "pax size")
        extended.clear()
        parts = safe_parts(name)
        if kind == _DIR_TYPE or (kind in _FILE_TYPES and name.endswith("/")):
            if size:
                raise BundleError(f"archive directory {name!r} declares {size} bytes of data; refusing the archive")
            member = Member("/".join(parts), "dir", 0, stream)
        elif kind in _FILE_TYPES:
            if not parts:
                raise BundleError(f"archive entry {name!r} has no file name; refusing the archive")
            member = Member("/".join(parts), "file", size, stream)
        else:
            raise BundleError(f"archive entry {name!r} is a link or device; refusing the archive")
        yield member
        member._skip()


def _read_exact(stream: Readable, size: int) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise BundleError("the archive ends in the middle of an entry; it is truncated")
    return data


def _check_checksum(header: bytes) -> None:
    stored = _number(header[148:156], "checksum")
    blank = header[:148] + b" " * 8 + header[156:]
    unsigned = sum(blank)
    signed = sum(b - 256 if b > 127 else b for b in blank)
    if stored not in (unsigned, signed):
        raise BundleError("an archive header has a wrong checksum; the file is not a tar archive or is corrupt")


def _number(field: bytes, what: str) -> int:
    if field[:1] and field[0] & 0x80:
        raise BundleError(f"an archive header's {what} uses base-256 (over 8 GiB); refusing it")
    text = field.split(b"\0", 1)[0].strip(b" ")
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        raise BundleError(f"an archive header's {what} is not a number; the file is not a tar archive") from None


def _decimal(text: str, what: str) -> int:
    if not text.isdigit():
        raise BundleError(f"an archive's {what} {text!r} is not a number; refusing it")
    return int(text)


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BundleError(f"archive entry name {raw!r} is not UTF-8; refusing the archive") from None


def _header_name(header: bytes) -> str:
    name = _text(header[0:100].split(b"\0", 1)[0])
    if header[257:265] == _POSIX_MAGIC:  # GNU headers keep other fields where ustar has the prefix
        prefix = _text(header[345:500].split(b"\0", 1)[0])
        if prefix:
            return f"{prefix}/{name}"
    return name


def _pax_records(body: bytes) -> dict[str, str]:
    """``"<length> <key>=<value>\\n"`` records; keeps ``path`` and ``size``, the two this reader honours."""
    records: dict[str, str] = {}
    pos = 0
    while pos < len(body):
        space = body.find(b" ", pos)
        length = _decimal(_text(body[pos:space]), "pax record length") if space > pos else 0
        record = body[space + 1 : pos + length]
        if length <= 0 or pos + length > len(body) or not record.endswith(b"\n") or b"=" not in record:
            raise BundleError("an archive's pax header is malformed; refusing it")
        key, value = record[:-1].split(b"=", 1)
        if key in (b"path", b"size"):
            records[key.decode()] = _text(value)
        pos += length
    return records
