"""The per-frame prediction encoder against the wire model it stands in for: the same bytes, whatever the result."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from edge_node.node.mapping import PredictionEncoder, prediction
from edge_node.vision.model import Classification, ModelInfo, Score
from edge_node.vision.pipeline import Result
from edge_node.wire.domain import Mode
from edge_node.wire.messages import Prediction

floats = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from([0.0, 1e-05, 5e-05, 0.36807, 1.0, 1e16])
probabilities = st.floats(0.0, 1.0).map(lambda p: round(p, 5)) | st.sampled_from([1e-05, 0.00012, 0.1])
labels = st.text(max_size=30)  # any text: quotes, backslashes, control characters, non-ASCII, U+2028
scores = st.builds(Score, st.integers(0, 20_000), labels, probabilities)
infos = st.builds(
    ModelInfo, labels, labels, st.sampled_from(["int8", "fp32"]), st.sampled_from(["onnxruntime", "litert"])
)
results = st.builds(
    Result,
    seq=st.integers(0, 2**53),
    ts=floats | st.floats(1.6e9, 2.2e9) | st.integers(0, 2**31),
    classification=st.builds(
        Classification, st.lists(scores, min_size=1, max_size=10).map(tuple), st.integers(1, 4096), floats, floats
    ),
    fps=floats | st.integers(0, 1000),
    total_ms=floats,
    mode=st.sampled_from(list(Mode)),
    model=infos,
    worker=st.integers(0, 7),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(results, min_size=1, max_size=3), st.text(min_size=1, max_size=20))
def test_the_encoder_writes_the_wire_models_bytes(batch: list[Result], node_id: str) -> None:
    encode = PredictionEncoder(node_id)  # one encoder over several results: its model cache must follow them
    for r in batch:
        assert encode(r) == prediction(node_id, r).to_bytes()


def test_the_encoded_payload_parses_as_a_prediction() -> None:
    info = ModelInfo("demo", "4", "int8", "litert")
    top = (Score(282, "tiger cat", 0.36807), Score(281, 'tabby "cat"', 0.3), Score(285, "Egyptian cat", 1e-05))
    r = Result(16, 1796255831.6367, Classification(top, 224, 0.1234, 2.987), 301.27, 4.5678, Mode.HIGH, info, 0)
    payload = PredictionEncoder("vm")(r)
    msg = Prediction.model_validate_json(payload)
    assert msg.label == "tiger cat" and msg.top_k[2].confidence == 1e-05 and msg.model.runtime == "litert"
    assert json.loads(payload)["latency_ms"] == {"preprocess": 0.12, "inference": 2.99, "total": 4.57}
