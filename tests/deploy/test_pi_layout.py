"""The Raspberry Pi layout, built here: apt's numpy in the system site, a venv on top, the role installs the node.

On Raspberry Pi OS, picamera2 and simplejpeg come from apt and are built against apt's numpy (1.24.2 on
Bookworm). A venv with --system-site-packages sees them, but if pip puts a numpy 2 into the venv it shadows
apt's and the camera breaks (raspberrypi/picamera2 #1088, #1211). The edge_node role pins the venv to the
system numpy (constraints-system.txt next to the target's constraints) and checks the result.

Here the "system site" is a folder holding only numpy 1.24.2 (like a fresh Pi with python3-numpy), put on the
venv's path after its own site-packages by a .pth file, exactly where a system site sits; the machine's own
Python packages stay out. The role then runs for real (packages, user and systemd off) with the Bookworm arm64
pins, installing x86_64 wheels of the same versions from the package index. Stand-in: the role probes the
venv's python instead of /usr/bin/python3, since the folder is not this machine's real system site.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.test_ansible_role import PLAYBOOK, _build_wheel, _run, local_role
from tests.support.constraints import constraints, header
from tests.support.paths import REPO

PINS = REPO / "deploy" / "constraints" / "bookworm-aarch64.txt"

CHECK = """
import json, sys
import numpy, cv2, onnxruntime
from edge_node.bundle import open_bundle
from edge_node.vision.model import Model
frame = numpy.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=numpy.uint8)
variant = Model(open_bundle(sys.argv[1])).build(224)
tensor = variant.preprocessor(frame)
best = variant.infer(0, tensor, 0.0).best
print(json.dumps({"numpy": numpy.__version__, "numpy_file": numpy.__file__, "cv2": cv2.__version__,
                  "onnxruntime": onnxruntime.__version__, "label": best.label, "confidence": best.confidence}))
"""


def _pip(python: Path | str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(python), "-m", "pip", "--disable-pip-version-check", *args],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_role_gives_a_venv_whose_numpy_is_the_system_one(tmp_path: Path, tiny_bundle: Path) -> None:
    if not PLAYBOOK.exists():
        pytest.skip("ansible-playbook is not installed (pip install 'ghostpi-edge-node[dev]')")
    numpy_version = header(PINS)["system-numpy"]
    system = tmp_path / "system-site"
    out = _pip(sys.executable, "install", "--quiet", "--only-binary=:all:", "--target", str(system),
               f"numpy=={numpy_version}")  # fmt: skip
    if out.returncode != 0:
        pytest.skip(f"cannot fetch numpy {numpy_version} from the package index: {out.stderr.strip()[-300:]}")

    root = tmp_path / "root"
    venv = root / "opt" / "ghostpi" / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "zz-system-site.pth").write_text(f"{system}\n")  # after the venv's own packages, like a system site
    python = venv / "bin" / "python"
    before = subprocess.run([python, "-c", "import numpy; print(numpy.__file__)"], capture_output=True, text=True)
    assert before.stdout.startswith(str(system)), before

    extra, playbook = local_role(
        tmp_path,
        node_id="pi-layout",
        edge_node_root=str(root),
        edge_node_python=str(python),
        edge_node_wheel=str(_build_wheel(tmp_path)),
        edge_node_constraints_target="bookworm-aarch64",
    )
    stdout, recap = _run(playbook, extra, tmp_path)
    assert recap["failed"] == 0
    own_check = stdout.split("Check that the venv imports the system numpy]", 1)[1].split("TASK [", 1)[0]
    assert "ok: [localhost]" in own_check  # the role's own check ran, and passed

    # The venv's numpy is the system one; ONNX Runtime and OpenCV from the pins run a real session on it.
    assert (root / "opt" / "ghostpi" / "constraints-system.txt").read_text() == f"numpy=={numpy_version}\n"
    assert not (site / "numpy").exists()
    check = subprocess.run([python, "-c", CHECK, str(tiny_bundle)], capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stderr[-3000:]
    result = json.loads(check.stdout)
    assert result["numpy"] == numpy_version and result["numpy_file"].startswith(str(system))
    pins = constraints.read_pins(PINS)
    assert result["onnxruntime"] == pins["onnxruntime"]
    assert result["cv2"] == pins["opencv-python-headless"].rsplit(".", 1)[0]  # 4.11.0.86 reports 4.11.0
    assert result["label"] and 0 < result["confidence"] <= 1

    # What the pin protects against: a package that wants numpy 2 (today's OpenCV) would put a second numpy
    # into the venv, in front of the system one. With the role's system pin, pip refuses instead.
    unpinned = _pip(python, "install", "--dry-run", "--only-binary=:all:", "--report", str(tmp_path / "r.json"),
                    "opencv-python-headless>=4.12")  # fmt: skip
    assert unpinned.returncode == 0, unpinned.stderr[-2000:]
    planned = {item["metadata"]["name"] for item in json.loads((tmp_path / "r.json").read_text())["install"]}
    assert "numpy" in planned
    pinned = _pip(python, "install", "--dry-run", "--only-binary=:all:", "-c",
                  str(root / "opt" / "ghostpi" / "constraints-system.txt"), "opencv-python-headless>=4.12")  # fmt: skip
    assert pinned.returncode != 0 and "ResolutionImpossible" in pinned.stderr, pinned.stderr[-2000:]

    # A second run installs nothing and restarts nothing.
    _, again = _run(playbook, extra, tmp_path)
    assert again["changed"] == 0 and again["failed"] == 0, again
