"""The frame path: a bundle's model loaded for this device, preprocessing, the inference pipeline and its modes.

What other packages use is here: the :class:`Pipeline` and what it reports (:class:`Result`, :class:`Failure`,
:class:`PipelineSnapshot`), the loaded model it serves (:class:`Loaded`, :class:`Model`), loading one for this
device (:func:`select_model`, :func:`load`) and why it was chosen (:class:`Choice`), the modes, and the
:class:`Preprocessor` the toolchain shares with the node. ``edge-node bench`` reads the decision's own
module, :mod:`edge_node.vision.selection`.
"""

from __future__ import annotations

from edge_node.vision.choice import Choice
from edge_node.vision.loading import load, select_model
from edge_node.vision.model import Classification, Model, ModelInfo
from edge_node.vision.modes import MODE_RESOLUTION, ModeController
from edge_node.vision.pipeline import Failure, Listener, Output, Pipeline, PipelineSnapshot, Result
from edge_node.vision.preprocess import Preprocessor
from edge_node.vision.variants import Loaded

__all__ = [
    "MODE_RESOLUTION",
    "Choice",
    "Classification",
    "Failure",
    "Listener",
    "Loaded",
    "ModeController",
    "Model",
    "ModelInfo",
    "Output",
    "Pipeline",
    "PipelineSnapshot",
    "Preprocessor",
    "Result",
    "load",
    "select_model",
]
