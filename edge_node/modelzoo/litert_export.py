"""PyTorch -> LiteRT (TFLite) files: FP32 by ``litert-torch``, INT8 by ``ai-edge-quantizer``, no TensorFlow.

* FP32: ``litert_torch.convert`` of the module wrapped by ``to_channel_last_io``, so the file takes an NHWC
  (1, R, R, 3) float32 tensor (the Preprocessor writes NHWC directly; TFLite computes in NHWC, so no
  transposes are left in the graph) and returns (1, classes) logits. Checked against PyTorch on real
  images like the ONNX files.
* INT8: static w8a8 (``ai-edge-quantizer``'s ``static_wi8_ai8``: per-channel symmetric INT8 weights,
  asymmetric per-tensor INT8 activations, min/max calibration on the bundle's calibration images) with
  float32 input and output (the graph quantises its input and dequantises its logits, which XNNPACK runs),
  and per-architecture modules kept in FP32 (``LiteRTRecipe``). litert-torch's own PT2E quantiser failed on
  GhostNetV2 (a Pad scale constraint); quantising the FP32 file works for every architecture here.

docs/quantization.md records the measurements behind each recipe.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import re
import sys
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from edge_node.errors import BundleError, MissingExtraError

if TYPE_CHECKING:
    import torch

__all__ = [
    "LiteRTRecipe",
    "export_tflite",
    "litert_recipe_for",
    "quantize_tflite",
    "require_litert_tools",
    "scope_regex",
]

log = logging.getLogger(__name__)

SIGNATURE = "serving_default"


@dataclass(frozen=True)
class LiteRTRecipe:
    """Every knob of one TFLite INT8 quantisation; ``asdict`` of it goes into the bundle manifest."""

    tool: str = "ai-edge-quantizer static_wi8_ai8"
    algorithm: str = "min_max_uniform_quantize"
    float_io: bool = True  # float32 in and out; the Quantize/Dequantize ops run inside the graph
    scopes_to_exclude: tuple[str, ...] = ()  # torch module paths whose ops stay FP32
    ops_to_exclude: tuple[str, ...] = ()  # TFLite op names (e.g. FULLY_CONNECTED) that stay FP32
    # FP32 compute on INT8 weights: the classifier's int8 logits tied or swapped the top classes too often
    weight_only_ops: tuple[str, ...] = ("FULLY_CONNECTED",)


# Measured per-architecture recipes (docs/quantization.md); anything else gets the default.
_RECIPES: dict[str, LiteRTRecipe] = {
    # The stem conv (named after its fused bn1) and the first two blocks (112 px, 16-24 channels) stay FP32.
    "efficientnet_lite0": LiteRTRecipe(scopes_to_exclude=("bn1", "blocks.0", "blocks.1")),
}


def litert_recipe_for(arch: str) -> LiteRTRecipe:
    """The measured recipe for ``arch`` (exact name or family prefix), else the default one."""
    for key, recipe in _RECIPES.items():
        if arch == key or arch.startswith(key):
            return recipe
    return LiteRTRecipe()


def scope_regex(module_path: str) -> str:
    """A regex matching the TFLite ops that ``module_path`` (e.g. ``blocks.0``, from the model's root) produced.

    litert-torch names each op's output after the module stack that made it, ``<class>_<attribute>`` per
    level below the ``to_channel_last_io`` wrapper (``..._wrapped/torch.nn.modules.container.Sequential_blocks
    /torch.nn.modules.container.Sequential_0/...``); fused ops join several such names with ``;``, and only
    the first (the op's own) is matched.
    """
    parts = "".join(f"/[^/;]*_{re.escape(part)}" for part in module_path.split("."))
    return f"^[^;]*_wrapped{parts}(?=[/;]|$)"


def require_litert_tools() -> None:
    """Fail early, with what to install, when the TFLite conversion tools are missing (without importing them)."""
    for module in ("litert_torch", "ai_edge_quantizer", "ai_edge_litert"):
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a module set to None in sys.modules, or a broken install
            found = False
        if not found:
            raise MissingExtraError(f"building TFLite files ({module})", "export")


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """The converter and quantiser print to stdout (some of it from C++): stdout must stay clean for --json."""
    sys.stdout.flush()
    saved = os.dup(1)
    tqdm = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"  # the quantiser's own progress bars; the build shows its own
    try:
        os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
        if tqdm is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = tqdm


def export_tflite(model: torch.nn.Module, resolution: int, out: Path) -> Path:
    """Convert ``model`` with a fixed NHWC (1, resolution, resolution, 3) float32 input to ``out``."""
    require_litert_tools()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # the converter's C++ info lines (oneDNN, op counts)
    import litert_torch
    import torch

    litert_torch.config.show_progress = False
    wrapped = litert_torch.to_channel_last_io(model, args=[0]).eval()
    try:
        with _stdout_to_stderr(), torch.no_grad():
            edge = litert_torch.convert(wrapped, (torch.zeros(1, resolution, resolution, 3),))
            edge.export(str(out))
    except Exception as exc:  # the converter raises many internal error types
        raise BundleError(f"TFLite conversion at {resolution}px failed: {type(exc).__name__}: {exc}") from exc
    return out


def quantize_tflite(
    fp32_tflite: Path,
    out: Path,
    calibration: Sequence[npt.NDArray[np.float32]],
    *,
    arch: str,
    recipe: LiteRTRecipe | None = None,
    threads: int = 2,
) -> dict[str, object]:
    """Quantise ``fp32_tflite`` (NHWC calibration tensors) to ``out``; return the recipe for the manifest."""
    require_litert_tools()
    from ai_edge_quantizer import algorithm_manager, qtyping, quantizer
    from ai_edge_quantizer import recipe as recipes

    if not calibration:
        raise BundleError("INT8 quantisation needs calibration images; pass at least one")
    recipe = recipe or litert_recipe_for(arch)
    names = _op_names(fp32_tflite)
    missing = [scope for scope in recipe.scopes_to_exclude if not any(re.search(scope_regex(scope), n) for n in names)]
    if missing:
        raise BundleError(
            f"the recipe keeps modules {missing} in FP32 but no op of {fp32_tflite.name} carries those module "
            "paths; convert it with litert-torch (export_tflite), which records them"
        )
    keep_float = algorithm_manager.AlgorithmName.NO_QUANTIZE
    every_op = qtyping.TFLOperationName.ALL_SUPPORTED
    try:
        with _stdout_to_stderr():
            q = quantizer.Quantizer(str(fp32_tflite))
            q.load_quantization_recipe(recipes.static_wi8_ai8(algorithm_manager.AlgorithmName(recipe.algorithm)))
            for scope in recipe.scopes_to_exclude:
                q.update_quantization_recipe(scope_regex(scope), every_op, None, keep_float)
            for op in recipe.ops_to_exclude:
                q.update_quantization_recipe(".*", qtyping.TFLOperationName(op), None, keep_float)
            for op in recipe.weight_only_ops:
                q.add_weight_only_config(".*", qtyping.TFLOperationName(op), 8)
            if recipe.float_io:
                for io_op in (qtyping.TFLOperationName.INPUT, qtyping.TFLOperationName.OUTPUT):
                    q.update_quantization_recipe(".*", io_op, None, keep_float)
            input_name = _input_name(fp32_tflite)
            feed = [{input_name: np.ascontiguousarray(x, dtype=np.float32)} for x in calibration]
            ranges = q.calibrate({SIGNATURE: feed}, num_threads=threads)
            q.quantize(ranges, enable_progress_report=False).export_model(str(out), overwrite=True)
        out.chmod(0o644)  # the quantiser writes it executable
    except (ValueError, RuntimeError, KeyError) as exc:
        raise BundleError(f"INT8 quantisation of {fp32_tflite.name} failed: {exc}") from exc
    result: dict[str, object] = {
        **asdict(recipe),
        "scopes_to_exclude": list(recipe.scopes_to_exclude),
        "ops_to_exclude": list(recipe.ops_to_exclude),
        "weight_only_ops": list(recipe.weight_only_ops),
        "calibration_images": len(calibration),
        "arch": arch,
    }
    log.info("quantised %s -> %s with %s", fp32_tflite.name, out.name, result)
    return result


def _input_name(path: Path) -> str:
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=str(path)).get_signature_runner(SIGNATURE)
    return str(next(iter(runner.get_input_details())))


def _op_names(path: Path) -> list[str]:
    """Each op's scope as ai-edge-quantizer matches it: the name of its (first) output tensor."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    # Without XNNPACK, so the graph's own ops are listed rather than the delegate's partitions.
    interpreter = Interpreter(
        model_path=str(path), experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    )
    tensors = {t["index"]: t["name"] for t in interpreter.get_tensor_details()}
    ops = interpreter._get_ops_details()  # the only per-op view the package has
    return [str(tensors.get(op["outputs"][0], "")) for op in ops if len(op["outputs"])]
