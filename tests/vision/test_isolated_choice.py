"""The device choice measures in a child process: the node keeps only the runtime it serves."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edge_node.bundle import open_bundle
from edge_node.config import ModelConfig
from edge_node.errors import AccuracyError, InferenceError
from edge_node.vision.isolated import choose_isolated
from tests.support.bundles import make_tiny_bundle
from tests.support.paths import REPO
from tests.support.reference_bundles import add_reference, replace_int8

CHOOSE = """
import json, logging, sys
from pathlib import Path
from edge_node.bundle import open_bundle
from edge_node.config import ModelConfig
from edge_node.vision.loading import select_model

logging.basicConfig(level=logging.INFO)
model, choice = select_model(open_bundle(Path(sys.argv[1])), ModelConfig(threads=2, workers="auto"), resolution=224)
print(json.dumps({"trials": len(choice.trials), "serves": choice.candidate.describe(),
                  "loaded": sorted(m for m in ("onnxruntime", "ai_edge_litert") if m in sys.modules)}))
"""


def test_choosing_loads_no_runtime_into_the_node(tmp_path: Path) -> None:
    """Four candidates are timed (INT8 and FP32, 1x2 and 2x1), all in the child: the calling process has not
    even imported a runtime until it builds what serves. In-process, the choice left both runtimes' libraries
    and a fragmented heap behind (a node serving LiteRT sat at 224 MB instead of 186 MB)."""
    bundle = make_tiny_bundle(tmp_path / "b", precision="both")
    run = subprocess.run(
        [sys.executable, "-c", CHOOSE, str(bundle)], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["trials"] == 4 and out["serves"].startswith("onnxruntime"), out
    assert out["loaded"] == [], f"the choice loaded {out['loaded']} into the node: {run.stderr[-2000:]}"
    assert "chosen on this device" in run.stderr  # the child logs where the node logs, at the node's level
    # Run as ``-m edge_node.vision.isolated``, the child imported its own module twice (once through the package,
    # once as __main__), and every node start printed runpy's RuntimeWarning about it.
    assert "Warning" not in run.stderr, run.stderr[-2000:]


def test_the_childs_errors_reach_the_node_as_they_were(tmp_path: Path) -> None:
    bundle = open_bundle(replace_int8(add_reference(make_tiny_bundle(tmp_path / "b", precision="int8"))))
    with pytest.raises(AccuracyError, match="no FP32 files"):
        choose_isolated(bundle, ModelConfig(threads=1, workers=1), resolution=224, strict=True)


def test_a_choice_that_does_not_finish_is_stopped_and_reported(tmp_path: Path) -> None:
    bundle = open_bundle(make_tiny_bundle(tmp_path / "b", precision="both"))
    with pytest.raises(InferenceError, match="did not finish within"):
        choose_isolated(bundle, ModelConfig(threads=2, workers="auto"), resolution=224, timeout=0.05)
