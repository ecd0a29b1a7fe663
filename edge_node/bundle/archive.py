"""Safe packing and unpacking of ``.tar.gz`` bundles.

Unpacking refuses absolute paths, ``..``, links, devices and anything beyond the file-count and size caps,
so that an archive from the network can never write outside its staging directory.
"""

from __future__ import annotations

import tarfile
from pathlib import Path, PurePosixPath
from typing import IO

from edge_node.errors import BundleError

__all__ = ["pack", "unpack"]

MAX_FILES = 64
MAX_TOTAL = 1 << 30  # 1 GiB unpacked


def pack(directory: Path, out: Path) -> Path:
    """Write ``directory``'s regular files as a flat, reproducible ``.tar.gz``."""
    with tarfile.open(out, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(p for p in directory.rglob("*") if p.is_file()):
            name = path.relative_to(directory).as_posix()
            info = tarfile.TarInfo(name)
            info.size = path.stat().st_size
            info.mode = 0o644
            with path.open("rb") as fh:
                tar.addfile(info, fh)
    return out


def unpack(archive: Path, dest: Path, *, max_files: int = MAX_FILES, max_total: int = MAX_TOTAL) -> Path:
    """Extract ``archive`` into the empty or new directory ``dest``; raise BundleError on anything unsafe."""
    dest.mkdir(parents=True, exist_ok=True)
    total = 0
    count = 0
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                name = member.name
                parts = PurePosixPath(name).parts  # "." and "./x" (tar -C dir .) normalise to () and ("x",)
                if name.startswith(("/", "\\")) or ".." in parts or "\\" in name:
                    raise BundleError(f"archive entry {name!r} has an unsafe path; refusing the archive")
                if member.isdir():
                    continue
                if not parts:
                    raise BundleError(f"archive entry {name!r} has no file name; refusing the archive")
                if not member.isfile():
                    raise BundleError(f"archive entry {name!r} is a link or device; refusing the archive")
                count += 1
                total += member.size
                if count > max_files:
                    raise BundleError(f"archive has more than {max_files} files; refusing it")
                if total > max_total:
                    raise BundleError(f"archive unpacks to more than {max_total} bytes; refusing it")
                target = dest.joinpath(*parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(member)
                if src is None:  # pragma: no cover - isfile() members always have data
                    raise BundleError(f"archive entry {name!r} has no data")
                with src, target.open("wb") as out:
                    _copy(src, out)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise BundleError(f"{archive.name} is not a readable .tar.gz bundle: {exc}") from exc
    return dest


def _copy(src: IO[bytes], out: IO[bytes]) -> None:
    while chunk := src.read(1 << 20):
        out.write(chunk)
