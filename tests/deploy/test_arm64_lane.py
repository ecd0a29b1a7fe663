"""The quick parts of the arm64 lane (scripts/arm64.sh): everything but the emulated root itself.

The lane builds a Debian arm64 root with mmdebstrap (minutes), and its runs take an hour under qemu on two
cores, so it is a documented command (docs/deploy.md), not part of the suite. What it decides with is tested
here: the answers recorder (for real, with ONNX Runtime, on real JPEG files, cut short and resumed), the
figures and the bars, the node-run verdict, the emulated CPU's dot-product bit, the role variables.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from scripts.arm64lane import chroot, figures, install, node
from scripts.arm64lane.lane import describe_check
from scripts.arm64lane.outputs import main as record
from tests.support.paths import REPO


def _line(image: str, label: int, **top1: int) -> str:
    outputs = {k.replace("__", "/"): {"top5": [v, 999, 998, 997, 996], "logits": [1.0] * 5} for k, v in top1.items()}
    return json.dumps({"image": image, "label": label, "outputs": outputs})


def test_figures_pair_int8_with_fp32_image_by_image() -> None:
    # 100 images: FP32 right on 80; INT8 differs from FP32 on 4, two of which FP32 had right (-2 points).
    int8, fp32 = [], []
    for i in range(100):
        label = i % 7
        f = label if i < 80 else label + 1
        q = f if i % 25 else (label + 2 if i < 80 else label + 3)
        int8.append(_line(f"img{i}.JPEG", label, onnxruntime__int8__224=q))
        fp32.append(_line(f"img{i}.JPEG", label, onnxruntime__fp32__224=f))
    int8.append('{"image": "torn')  # a run killed mid-line
    [row] = figures.compare("cortex-a72", figures.read_answers(int8), figures.read_answers(fp32))
    assert (row.images, row.fp32_top1, row.int8_top1, row.agreement) == (100, 0.80, 0.76, 0.96)
    assert row.change == pytest.approx(-0.04)
    assert row.agreement_se == pytest.approx((0.96 * 0.04 / 100) ** 0.5)
    assert not row.passed
    checked = {"cortex-a72"}
    assert figures.verdict(row, {("cortex-a72", "onnxruntime")}, checked) == "below the bars; the node refuses it here"
    assert figures.verdict(row, {("cortex-a72", "litert")}, checked) == "**below the bars and served**"
    assert "not run on this CPU" in figures.verdict(row, set(), {"cortex-a76"})
    table = figures.markdown([row], set(), checked)
    assert "| cortex-a72 | onnxruntime | 224 | 100 | 80.0% | 76.0% | -4.0 (± 2.0) | 96.0% (± 2.0) |" in table


def test_figures_bars_are_the_issues() -> None:
    def row(int8: float, agreement: float) -> figures.Row:
        return figures.Row("cortex-a76", "litert", 224, 1000, 0.75, int8, agreement)

    assert row(0.746, 0.97).passed  # 0.4 points below FP32, 97 % agreement: just within
    assert not row(0.745, 0.99).passed  # 0.5 points below
    assert not row(0.76, 0.969).passed  # better top-1, but agreement under 97 %


def test_fp32_check_and_docs_markers() -> None:
    arm = figures.read_answers([_line("a", 1, litert__fp32__224=1), _line("b", 2, litert__fp32__224=3)])
    x86 = figures.read_answers([_line("a", 1, litert__fp32__224=1), _line("b", 2, litert__fp32__224=2)])
    assert "| litert/fp32/224 | 2 | 50.0% |" in figures.fp32_markdown("cortex-a72", arm, "x86-native", x86)
    text = "intro\n<!-- b -->\nold\n<!-- e -->\nafter\n"
    new = "intro\n<!-- b -->\nnew\n<!-- e -->\nafter\n"
    assert figures.replace_between(text, "<!-- b -->", "<!-- e -->", "new\n") == new
    with pytest.raises(ValueError, match="markers"):
        figures.replace_between("no markers", "<!-- b -->", "<!-- e -->", "x")
    docs = (REPO / "docs" / "benchmarks.md").read_text()
    assert docs.count("<!-- arm64-lane:begin -->") == 1 and docs.count("<!-- arm64-lane:end -->") == 1


def _auxv(hwcap: int) -> bytes:
    pairs = [(6, 4096), (16, hwcap), (0, 0)]
    return b"".join(k.to_bytes(8, "little") + v.to_bytes(8, "little") for k, v in pairs)


def test_dot_product_bit_of_the_emulated_core() -> None:
    assert chroot.dotprod(_auxv(0xFF | chroot.HWCAP_ASIMDDP))
    assert not chroot.dotprod(_auxv(0xFF))
    assert not chroot.dotprod(b"")
    argv = chroot.mmdebstrap_argv(Path("/tmp/root"))
    assert argv[:3] == ["mmdebstrap", "--arch=arm64", "--variant=apt"] and argv[-2:] == ["bookworm", "/tmp/root"]
    assert "python3-numpy" in argv[3]  # apt's numpy, as on Raspberry Pi OS
    root = chroot.Root(Path("/r"))
    cmd = root.argv(["edge-node", "run"], cpu="cortex-a72", env={"EDGE_NODE_ID": "n"})
    assert cmd[:5] == ["chroot", "/r", "/usr/bin/env", "-i", f"PATH={chroot._ENV_PATH}"]
    assert "QEMU_CPU=cortex-a72" in cmd and "EDGE_NODE_ID=n" in cmd and cmd[-2:] == ["edge-node", "run"]


def test_role_variables_exist_in_the_role() -> None:
    """A misspelt variable would be ignored by Ansible and the lane would test something else."""
    defaults = yaml.safe_load((REPO / "deploy/ansible/roles/edge_node/defaults/main.yml").read_text())
    variables = install.role_vars(Path("/w.whl"), Path("/f.tar.gz"))
    assert {k for k in variables if k.startswith("edge_node_")} <= set(defaults)
    assert variables["edge_node_manage_service"] is False and "litert" in variables["edge_node_pip_extras"]  # type: ignore[operator]
    assert "ansible_connection=community.general.chroot" in install.inventory(Path("/r"))
    collections = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-doc"), "-t", "connection", "community.general.chroot"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert collections.returncode == 0, collections.stderr  # bundled with the ansible package: no Galaxy


def test_node_run_verdict() -> None:
    photos = {"chelsea": "tiger cat", "coffee": "espresso", "rocket": "missile"}
    seen = node.NodeRun(labels=["tiger cat", "espresso", "missile", "tiger cat"])
    assert node.judge(seen, photos) == (True, "4 predictions, every photo as on x86: espresso, missile, tiger cat")
    ok, why = node.judge(node.NodeRun(labels=["tiger cat", "Egyptian cat", "espresso", "missile"]), photos)
    assert not ok and "Egyptian cat" in why
    ok, why = node.judge(node.NodeRun(labels=["tiger cat", "espresso"]), photos)
    assert not ok and "rocket" in why
    assert node.judge(node.NodeRun(), photos) == (False, "the node published no prediction")


def _images(folder: Path, count: int) -> None:
    folder.mkdir()
    rng = np.random.default_rng(0)
    wnids = (REPO / "edge_node/modelzoo/imagenet_wnids.txt").read_text().split()
    for i in range(count):
        image = rng.integers(0, 255, (96, 128, 3), dtype=np.uint8)
        cv2.imwrite(str(folder / f"{wnids[i]}_{i}.JPEG"), image)


def test_answers_are_recorded_resumably_with_the_nodes_runtime(tmp_path: Path, tiny_bundle: Path) -> None:
    images, out = tmp_path / "images", tmp_path / "answers.jsonl"
    _images(images, 6)
    args = ["--bundle", str(tiny_bundle), "--images", str(images), "--out", str(out)]
    assert record([*args, "--limit", "2"]) == 0
    first = out.read_text().splitlines()
    assert len(first) == 2
    with out.open("a") as fh:
        fh.write('{"image": "torn')  # killed while writing
    assert record([*args, "--limit", "4"]) == 0
    lines = out.read_text().splitlines()
    assert lines[:2] == first and len(lines) == 4
    records = [json.loads(line) for line in lines]
    assert len({r["image"] for r in records}) == 4
    keys = {f"onnxruntime/int8/{r}" for r in (224, 192, 160)}
    for r in records:
        assert set(r["outputs"]) == keys and r["label"] < 6
        for answer in r["outputs"].values():
            assert len(answer["top5"]) == 5 and answer["logits"] == sorted(answer["logits"], reverse=True)
    # the same images in the same order whatever the limit: a cut-short run is a prefix of a longer one
    again = tmp_path / "again.jsonl"
    assert record([*args[:-1], str(again), "--limit", "4", "--only", "onnxruntime/int8/224"]) == 0
    assert [json.loads(x)["image"] for x in again.read_text().splitlines()] == [r["image"] for r in records]


def test_bench_checks_are_described_with_their_gate() -> None:
    old = {"runtime": "litert", "resolution": 192, "agreement": 0.95, "passed": True, "gate": 0.9}
    assert describe_check(old) == "litert int8 192px: 95.0% top-1 agreement: passes its check"
    new = {**old, "passed": False, "divergence": 0.0123, "max_divergence": 0.0096}
    assert describe_check(new).endswith("divergence 0.0123 (gate 0.0096): FAILS its check")
