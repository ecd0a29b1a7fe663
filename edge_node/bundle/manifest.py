"""The model bundle manifest: the contract between the toolchain, the node, OTA and Ansible.

docs/model-bundles.md describes the format; this module is its single source of truth.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path, PurePosixPath
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from edge_node.errors import BundleError, BundleIntegrityError
from edge_node.runtimes import Runtime

__all__ = [
    "MANIFEST",
    "MAX_MANIFEST_BYTES",
    "MAX_SIGNATURE_BYTES",
    "SCHEMA_VERSION",
    "SIGNATURE",
    "BuildInfo",
    "FileEntry",
    "Layout",
    "Manifest",
    "Preprocess",
    "ReferenceImage",
    "ReferenceInfo",
    "VariantFile",
    "file_digest",
    "parse_manifest",
    "read_manifest",
    "verify_files",
]

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
MAX_MANIFEST_BYTES = 4 << 20  # a real manifest is 10-100 KB; the limit bounds what is read before the signature check
MAX_SIGNATURE_BYTES = 1024  # base64 of 64 bytes and a newline

Precision = Literal["fp32", "int8"]
Layout = Literal["NCHW", "NHWC"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _safe_name(name: str) -> str:
    """Bundle paths are plain relative POSIX names: no absolute paths, no '..', no backslashes."""
    path = PurePosixPath(name)
    if not name or "\\" in name or path.is_absolute() or ".." in path.parts or name != str(path):
        raise ValueError(f"unsafe file name in manifest: {name!r}")
    return name


class Preprocess(_Model):
    """How a frame becomes the model's input tensor.

    Resize the shorter side to ``round(resolution / crop_pct)``, centre-crop ``resolution`` square,
    then (for float32 inputs) ``(pixel / 255 - mean) / std`` in ``color`` order.
    """

    color: Literal["RGB", "BGR"] = "RGB"
    resize: Literal["shorter_side"] = "shorter_side"
    crop: Literal["center"] = "center"
    crop_pct: float = Field(0.875, gt=0.1, le=1.0)
    interpolation: Literal["linear", "area", "cubic"] = "linear"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    layout: Layout = "NCHW"  # a variant may override it (TFLite files take NHWC)
    input_dtype: Literal["float32", "uint8"] = "float32"  # uint8: the model normalises itself

    @field_validator("std")
    @classmethod
    def _nonzero(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(v <= 0 for v in value):
            raise ValueError("std values must be positive")
        return value


class VariantFile(_Model):
    """The manifest's entry for one model file: one input resolution at one precision on one runtime.

    (What :mod:`edge_node.vision.model` calls a ``Variant`` is such a file loaded: its sessions and buffers.)
    """

    resolution: int = Field(ge=32, le=1024)
    precision: Precision
    file: str
    runtime: Runtime = "onnxruntime"  # bundles made before LiteRT support list ONNX files only
    layout: Layout | None = None  # None: the bundle's preprocess.layout

    _file = field_validator("file")(classmethod(lambda cls, v: _safe_name(v)))

    @model_serializer(mode="wrap")
    def _compatible(self, handler: SerializerFunctionWrapHandler) -> dict[str, object]:
        """ONNX variants are written without ``runtime``, so nodes older than LiteRT support still read them."""
        data: dict[str, object] = handler(self)
        if data.get("runtime") == "onnxruntime":
            del data["runtime"]
        return data


class ReferenceImage(_Model):
    """One reference frame and the FP32 model's top-5 class ids for it at every resolution, best first.

    ``logprobs`` (bundles with a divergence gate) holds the FP32 log-probabilities of those five classes, so a
    node can measure how far an INT8 file's output is from FP32's, not only whether the top-1 matches.
    """

    file: str
    top5: dict[int, list[int]]  # resolution -> class ids
    logprobs: dict[int, list[float]] = Field(default_factory=dict)  # resolution -> FP32 log p of the top5 ids
    origin: str = ""  # the photo it was cut from

    _file = field_validator("file")(classmethod(lambda cls, v: _safe_name(v)))

    @model_validator(mode="after")
    def _paired(self) -> ReferenceImage:
        for r, values in self.logprobs.items():
            if len(values) != len(self.top5.get(r, ())):
                raise ValueError(f"{self.file}: logprobs at {r}px must pair with its top5 class ids")
            if any(not v <= 0.0 for v in values):
                raise ValueError(f"{self.file}: logprobs at {r}px must be finite log-probabilities (<= 0)")
        return self

    @model_serializer(mode="wrap")
    def _compact(self, handler: SerializerFunctionWrapHandler) -> dict[str, object]:
        """Written without ``logprobs`` when there are none, so older bundles keep their bytes."""
        data: dict[str, object] = handler(self)
        if not data.get("logprobs"):
            data.pop("logprobs", None)
        return data


class ReferenceInfo(_Model):
    """Real images with the FP32 model's answers, so a node can check an INT8 file on its own CPU.

    Two gates: bundles with ``max_divergence`` (and ``logprobs`` on every image) gate each INT8 file on the
    mean divergence of its outputs from FP32's over the frames (``edge_node.bundle.reference``), at most the
    figure the build machine measured for that file plus a tolerance. Older bundles gate on ``min_agreement``,
    the share of images whose INT8 top-1 must equal the FP32 top-1.
    """

    images: list[ReferenceImage] = Field(min_length=1)
    min_agreement: float = Field(gt=0.0, le=1.0)
    max_divergence: dict[str, float] = Field(default_factory=dict)  # INT8 file -> highest mean divergence passed
    source: str = ""  # where the images came from (the build's image folder and split)
    outputs: str = "torch"  # what computed the FP32 answers: the PyTorch model the files were checked against

    @model_validator(mode="after")
    def _divergence_needs_logprobs(self) -> ReferenceInfo:
        for name, bar in self.max_divergence.items():
            _safe_name(name)
            if not bar >= 0.0:
                raise ValueError(f"max_divergence for {name} must be >= 0, got {bar}")
        if self.max_divergence and any(not image.logprobs for image in self.images):
            raise ValueError("max_divergence needs the FP32 logprobs of every reference image")
        return self

    @model_serializer(mode="wrap")
    def _compact(self, handler: SerializerFunctionWrapHandler) -> dict[str, object]:
        """Written without ``max_divergence`` when there is none, so older bundles keep their bytes."""
        data: dict[str, object] = handler(self)
        if not data.get("max_divergence"):
            data.pop("max_divergence", None)
        return data


class FileEntry(_Model):
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)


class BuildInfo(_Model):
    created: str  # ISO 8601, UTC
    weights: str = ""
    toolchain: dict[str, str] = Field(default_factory=dict)
    calibration: dict[str, object] = Field(default_factory=dict)
    dataset: dict[str, object] = Field(default_factory=dict)  # model train: classes, image counts, files hash, split
    training: dict[str, object] = Field(default_factory=dict)  # model train: schedule and validation figures


class Manifest(_Model):
    schema_version: int = SCHEMA_VERSION
    name: str = Field(min_length=1, max_length=128)
    version: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
    # Orders bundles for downgrade protection: a node refuses an update whose serial is below the newest it
    # committed. 0 (absent in the file) for bundles made before serials; see docs/model-bundles.md.
    serial: int = Field(0, ge=0, le=(1 << 63) - 1)
    arch: str
    precision: Precision  # the precision the node runs by default
    num_classes: int = Field(gt=1)
    labels: str = "labels.txt"
    input_name: str = "input"
    preprocess: Preprocess
    variants: list[VariantFile] = Field(min_length=1)
    files: dict[str, FileEntry]
    metrics: list[dict[str, object]] = Field(default_factory=list)
    build: BuildInfo
    reference: ReferenceInfo | None = None  # bundles made before reference sets have none

    _labels = field_validator("labels")(classmethod(lambda cls, v: _safe_name(v)))

    @field_validator("schema_version")
    @classmethod
    def _schema(cls, value: int) -> int:
        if value != SCHEMA_VERSION:
            raise ValueError(f"schema_version {value} is not supported (this node reads {SCHEMA_VERSION})")
        return value

    @field_validator("files")
    @classmethod
    def _names(cls, value: dict[str, FileEntry]) -> dict[str, FileEntry]:
        for name in value:
            _safe_name(name)
            if name in (MANIFEST, SIGNATURE):
                raise ValueError(f"{name} cannot list itself")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        listed = set(self.files)
        missing = {v.file for v in self.variants} - listed
        if self.reference is not None:
            missing |= {image.file for image in self.reference.images} - listed
        if self.labels not in listed:
            missing.add(self.labels)
        if missing:
            raise ValueError(f"files referenced but not hashed in 'files': {sorted(missing)}")
        if self.reference is not None:
            wanted = {v.resolution for v in self.variants}
            for image in self.reference.images:
                if not wanted <= set(image.top5):
                    absent = sorted(wanted - set(image.top5))
                    raise ValueError(f"reference image {image.file} has no FP32 answer at {absent}")
            unknown = set(self.reference.max_divergence) - {v.file for v in self.variants if v.precision == "int8"}
            if unknown:
                raise ValueError(f"reference.max_divergence names files that are not INT8 variants: {sorted(unknown)}")
        if not any(v.precision == self.precision for v in self.variants):
            raise ValueError(f"no variant has the default precision {self.precision}")
        return self

    @model_serializer(mode="wrap")
    def _without_zero_serial(self, handler: SerializerFunctionWrapHandler) -> dict[str, object]:
        """A bundle without a serial is written without one, so that its bytes (and signature) do not change
        and nodes older than serials still read it."""
        data: dict[str, object] = handler(self)
        if data.get("serial") == 0:
            del data["serial"]
        return data

    def resolutions(self, precision: str, runtime: Runtime = "onnxruntime") -> list[int]:
        """Resolutions available at ``precision`` on ``runtime``, largest first."""
        return sorted(
            {v.resolution for v in self.variants if v.precision == precision and v.runtime == runtime}, reverse=True
        )

    def runtimes(self) -> list[Runtime]:
        """The runtimes this bundle has files for."""
        return sorted({v.runtime for v in self.variants})

    def variant(self, resolution: int, precision: str, runtime: Runtime = "onnxruntime") -> VariantFile:
        for v in self.variants:
            if v.resolution == resolution and v.precision == precision and v.runtime == runtime:
                return v
        raise BundleError(
            f"bundle {self.name} {self.version} has no {runtime} {precision} model at {resolution}px; "
            f"it has {[(v.runtime, v.precision, v.resolution) for v in self.variants]}"
        )

    def layout(self, variant: VariantFile) -> Layout:
        """The tensor layout ``variant``'s file takes: its own, else the bundle's."""
        return variant.layout or self.preprocess.layout

    def to_bytes(self) -> bytes:
        """Canonical bytes: what gets signed and written as manifest.json."""
        return (json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True) + "\n").encode()


def file_digest(path: Path) -> FileEntry:
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return FileEntry(sha256=h.hexdigest(), size=size)


def read_manifest(directory: Path) -> tuple[Manifest, bytes]:
    """Parse ``manifest.json``; return the model and the exact bytes (the signature covers those)."""
    path = directory / MANIFEST
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError as exc:
        raise BundleError(f"{directory} is not a model bundle: {MANIFEST} is missing") from exc
    except OSError as exc:
        raise BundleError(f"cannot read {path}: {exc}") from exc
    return parse_manifest(raw, str(path)), raw


def parse_manifest(raw: bytes, where: str) -> Manifest:
    """Validate manifest bytes (``where`` names them in errors); BundleError if they are not a manifest."""
    if len(raw) > MAX_MANIFEST_BYTES:
        raise BundleError(f"{where} is larger than {MAX_MANIFEST_BYTES} bytes; it is not a bundle manifest")
    try:
        return Manifest.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        at = ".".join(str(p) for p in first["loc"]) or "manifest"
        raise BundleError(f"{where} is invalid at {at}: {first['msg']}") from exc


def verify_files(directory: Path, manifest: Manifest) -> None:
    """Check the size and sha256 of every listed file; the error names the first file that differs."""
    root = directory.resolve()
    for name, entry in sorted(manifest.files.items()):
        path = (directory / name).resolve()
        if root not in path.parents:
            raise BundleIntegrityError(f"{name} escapes the bundle directory")
        if not path.is_file():
            raise BundleIntegrityError(f"bundle file {name} is missing from {directory}")
        size = path.stat().st_size
        if size != entry.size:
            raise BundleIntegrityError(
                f"bundle file {name} has {size} bytes, the manifest says {entry.size}: the bundle is "
                "corrupt or was modified; rebuild or re-download it"
            )
        if file_digest(path).sha256 != entry.sha256:
            raise BundleIntegrityError(
                f"bundle file {name} does not match its sha256 in the manifest: the bundle is corrupt or "
                "was modified; rebuild or re-download it"
            )
