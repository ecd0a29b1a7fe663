from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.brokers import Mosquitto

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


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


@pytest.fixture(scope="session")
def imagenet_sample() -> Path:
    """../shared/imagenet-sample: real ImageNet photos, absent from a user's fresh clone."""
    folder = SHARED / "imagenet-sample"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent: the ImageNet sample only exists beside the project's CI checkout")
    return folder
