"""The arm64 lane (``scripts/arm64.sh``): the node on an emulated Raspberry Pi OS root, measured. docs/deploy.md.

Steps, each resumable; results per bundle in the root, ``<cache>/ghostpi/arm64/root/opt/ghostpi-lane/<bundle>``:

- ``root``: build the Bookworm arm64 root once (mmdebstrap), or reuse it;
- ``install``: the Ansible role against the root (chroot connection), with the demo bundle as factory bundle;
- ``node``: ``edge-node run`` in the root per emulated CPU, for ``--node-seconds`` after its first prediction,
  against a mosquitto on the host, until it predicted every demo photo; its labels must be x86's;
- ``bench``: ``edge-node bench`` in the root per CPU: every INT8 file's reference check on ARM kernels;
- ``eval``: INT8 and FP32 answers on held-out ImageNet images per CPU (``outputs.py``), all CPUs at once;
- ``figures``: top-1 change and agreement per CPU, runtime and resolution, against the issue's bars.

CPUs: ``cortex-a72`` and ``cortex-a76`` in the root; ``x86-native`` (this machine) and ``x86-haswell`` (the
same venv under ``qemu-x86_64 -cpu Haswell``: AVX2 without VNNI) for the eval. Every INT8 file is compared with
the FP32 files' answers on this machine: FP32 under emulation costs as much as all INT8 files together, and
FP32 answers do not depend on integer instructions. That reuse is itself checked: ``cortex-a72`` also runs the
224 px FP32 files on the first ``--fp32-limit`` images, and the figures give their agreement with x86's.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scripts.arm64lane import figures
from scripts.arm64lane.chroot import CPUS, Root, cache_root
from scripts.arm64lane.install import build_wheel, run_role
from scripts.arm64lane.node import EveryPhoto, judge, mosquitto, run_node

__all__ = ["main"]

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
STEPS = ("root", "install", "node", "bench", "eval", "figures")
ARM = tuple(CPUS)
X86 = ("x86-native", "x86-haswell")
FP32_CPU = "x86-native"  # FP32 answers every INT8 file is compared with
ARM_FP32 = ("onnxruntime/fp32/224", "litert/fp32/224")  # FP32 on ARM kernels, a check of that reuse
LANE = "/opt/ghostpi-lane"  # in the root: the bundles, outputs.py and the results
IMAGES = "/mnt/imagenet-sample"
VENV = "/opt/ghostpi/venv"
BEGIN, END = "<!-- arm64-lane:begin -->", "<!-- arm64-lane:end -->"


@dataclass(frozen=True)
class Lane:
    """Where one bundle's runs keep everything: ``inside`` the root, and the same folder seen from the host."""

    root: Root
    tag: str  # <bundle name>-<version>-<manifest digest>: results of different bundles never mix

    @property
    def inside(self) -> str:
        return f"{LANE}/{self.tag}"

    @property
    def host(self) -> Path:
        return self.root.path / self.inside.lstrip("/")

    @property
    def fp32(self) -> str:
        return f"{LANE}/fp32"


def bundle_tag(bundle: Path) -> str:
    raw = (bundle / "manifest.json").read_bytes()
    manifest = json.loads(raw)
    return f"{manifest['name']}-{manifest['version']}-{hashlib.sha256(raw).hexdigest()[:8]}"


def say(text: str) -> None:
    print(f"arm64 lane: {text}", file=sys.stderr, flush=True)


def default_images() -> Path:
    env = os.environ.get("GHOSTPI_SHARED")
    return (Path(env) if env else REPO.parent / "shared") / "imagenet-sample"


def default_bundle() -> Path:
    from edge_node.modelzoo.demo import ensure_demo_bundle

    return ensure_demo_bundle(progress=False)


def fp32_bundle(bundle: Path, work: Path) -> Path:
    """A bundle of the FP32 files the INT8 ones were made from (the demo bundle ships INT8 only); built once
    with the model toolchain (torch, on this machine only)."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    out = work / f"fp32-{manifest['arch']}"
    if (out / "manifest.json").is_file():
        return out
    weights = str(manifest["build"]["weights"])
    say(f"building the FP32 files of {manifest['arch']} once into {out} (model toolchain)")
    cmd = [sys.executable, "-m", "edge_node", "model", "build", "--arch", str(manifest["arch"]),
           "--weights", weights, "--precision", "fp32", "--runtime", "both", "--reference-images", "0",
           "--no-progress", "--name", f"fp32-{manifest['arch']}", "--version", "1", "--out", str(out)]  # fmt: skip
    subprocess.run(cmd, check=True, timeout=3600)
    return out


def _copytree(src: Path, dest: Path) -> None:
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(src, dest)


def step_install(root: Root, bundle: Path, work: Path) -> None:
    from edge_node.bundle.archive import pack

    wheel = build_wheel(work / "wheels")
    factory = pack(bundle, work / "factory.tar.gz")
    say(f"running the edge_node role against {root.path} (chroot connection); log: {work / 'ansible.log'}")
    root.install_ca_certificates()
    with root.mounted():
        run_role(root.path, wheel, factory, work / "ansible", work / "ansible.log")
    say("installed: " + root.run([f"{VENV}/bin/python", "-c", _VERSIONS]).stdout.strip())


_VERSIONS = (
    "import numpy, cv2, onnxruntime, ai_edge_litert, importlib.metadata as m; "
    "print('numpy', numpy.__version__, numpy.__file__, 'opencv', cv2.__version__, "
    "'onnxruntime', onnxruntime.__version__, 'ai-edge-litert', m.version('ai-edge-litert'))"
)


def stage(lane: Lane, bundle: Path, fp32: Path) -> None:
    """The bundles and outputs.py where the root's runs find them."""
    top = lane.root.path / LANE.lstrip("/")
    if not (lane.host / "bundle" / "manifest.json").is_file():
        _copytree(bundle, lane.host / "bundle")
    if not (top / "fp32" / "manifest.json").is_file():
        _copytree(fp32, top / "fp32")
    shutil.copy(HERE / "outputs.py", top / "outputs.py")


def step_node(lane: Lane, cpus: list[str], bundle: Path, seconds: float, max_seconds: float) -> bool:
    ok = True
    root, results = lane.root, lane.host
    for cpu in cpus:
        node_id = f"arm64-{cpu}"
        state = f"/var/lib/ghostpi-lane/{lane.tag}/{cpu}"
        shutil.rmtree(root.path / state.lstrip("/"), ignore_errors=True)
        every_photo = EveryPhoto(bundle)
        with mosquitto(results / "mosquitto") as port:
            env = {"EDGE_ENV_FILE": "/etc/edge-node/edge-node.env", "EDGE_MQTT__PORT": str(port),
                   "EDGE_NODE_ID": node_id, "EDGE_STATE_DIR": state, "EDGE_MODEL__BUNDLE": f"{lane.inside}/bundle",
                   "EDGE_SUPERVISOR__STALL_TIMEOUT": "600"}  # fmt: skip
            argv = root.argv([f"{VENV}/bin/edge-node", "run"], cpu=cpu, env=env)
            say(f"{cpu}: edge-node run (the device choice comes first: minutes under emulation)")
            with root.mounted():
                log = results / f"node-{cpu}.log"
                run = run_node(
                    argv, port, node_id, seconds=seconds, start_timeout=1800, log=log, enough=every_photo,
                    max_seconds=max_seconds,
                )  # fmt: skip
        every_photo(run)
        expected = every_photo.expected
        passed, message = judge(run, expected)
        ok &= passed
        say(f"{cpu}: {'ok' if passed else 'FAILED'}: {message}")
        report = {"cpu": cpu, "passed": passed, "message": message, "x86_labels": expected, **run.as_dict()}
        (results / f"node-{cpu}.json").write_text(json.dumps(report, indent=2) + "\n")
    return ok


def step_bench(lane: Lane, cpus: list[str]) -> bool:
    ok = True
    for cpu in cpus:
        out = f"{lane.inside}/bench-{cpu}.json"
        log = lane.host / f"bench-{cpu}.log"
        say(f"{cpu}: edge-node bench (reference checks of every INT8 file on ARM kernels)")
        argv = [f"{VENV}/bin/edge-node", "bench", f"{lane.inside}/bundle", "--seconds", "1", "--resolutions", "224",
                "--out", out]  # fmt: skip
        with lane.root.mounted():
            done = lane.root.run(argv, cpu=cpu, log=log)
        path = lane.root.path / out.lstrip("/")
        if done.returncode != 0 or not path.exists():
            say(f"{cpu}: edge-node bench failed (exit {done.returncode}); see {log}")
            ok = False
            continue
        for check in json.loads(path.read_text())["checks"]:
            say(f"{cpu}: {describe_check(check)}")
            ok &= bool(check["passed"])
    return ok


def describe_check(check: dict[str, Any]) -> str:
    """One reference check from ``edge-node bench`` JSON (top-1 gate, or the divergence gate where the bundle
    has one)."""
    what = f"{check['runtime']} int8 {check['resolution']}px: {check['agreement']:.1%} top-1 agreement"
    if check.get("max_divergence") is not None and check.get("divergence") is not None:
        what += f", divergence {check['divergence']:.4f} (gate {check['max_divergence']:.4f})"
    return f"{what}: {'passes' if check['passed'] else 'FAILS'} its check"


def eval_argv(lane: Lane, job: str, limit: int, images: Path, files: str = "") -> list[str]:
    """The outputs.py command of ``job`` (a CPU, or ``<cpu>-fp32``): in the root for ARM, else this Python.
    ``files``: the INT8 file keys to run (default all; the FP32 reference always runs every FP32 file)."""
    cpu, fp32 = job.removesuffix("-fp32"), job.endswith("-fp32")
    what = ["--fp32", "FP32"] if fp32 or cpu == FP32_CPU else []
    only = ["--only", ",".join(ARM_FP32)] if fp32 else []
    if files and not fp32 and cpu != FP32_CPU:
        only = ["--only", files]
    common = ["--limit", str(limit), *what, *only]
    if cpu in ARM:
        args = ["--bundle", f"{lane.inside}/bundle", "--images", IMAGES, "--out", f"{lane.inside}/outputs-{job}.jsonl"]
        args = [lane.fp32 if a == "FP32" else a for a in [*args, *common]]
        return lane.root.argv([f"{VENV}/bin/python", f"{LANE}/outputs.py", *args], cpu=cpu)
    fp32_dir = str(lane.root.path / lane.fp32.lstrip("/"))
    args = [
        "--bundle",
        str(lane.host / "bundle"),
        "--images",
        str(images),
        "--out",
        str(lane.host / f"outputs-{job}.jsonl"),
    ]
    args = [fp32_dir if a == "FP32" else a for a in [*args, *common]]
    python = [sys.executable, str(HERE / "outputs.py"), *args]
    return ["qemu-x86_64-static", "-cpu", "Haswell", *python] if cpu == "x86-haswell" else python


def step_eval(lane: Lane, cpus: list[str], limit: int, fp32_limit: int, images: Path, files: str) -> None:
    """Every CPU at once, each with one thread, niced; each writes its answers image by image."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    jobs = [(c, limit) for c in cpus] + ([("cortex-a72-fp32", fp32_limit)] if "cortex-a72" in cpus else [])
    if not (lane.host / f"outputs-{FP32_CPU}.jsonl").exists() and FP32_CPU not in cpus:
        jobs.append((FP32_CPU, limit))  # the FP32 answers every figure needs
    procs = []
    with lane.root.mounted({images: IMAGES}):
        for job, n in jobs:
            log = (lane.host / f"eval-{job}.log").open("a")
            say(f"{job}: recording answers on {n} held-out images; progress in {log.name}")
            argv = ["nice", "-n", "10", *eval_argv(lane, job, n, images, files)]
            procs.append((job, subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env), log))
        for job, proc, log in procs:
            code = proc.wait()
            log.close()
            say(f"{job}: answers recorded (exit {code})")


def gate_decisions(results: Path) -> tuple[set[tuple[str, str]], set[str]]:
    """From the node runs: (cpu, runtime) pairs whose INT8 files the node's gate refused, and the CPUs it ran on."""
    refused, checked = set(), set()
    for path in sorted(results.glob("node-*.json")):
        report = json.loads(path.read_text())
        device = (report.get("state") or {}).get("device") or {}
        checked.add(report["cpu"])
        refused |= {(report["cpu"], c["runtime"]) for c in device.get("checks", []) if not c["passed"]}
    return refused, checked


def step_figures(lane: Lane, cpus: list[str], write_docs: bool) -> bool:
    results = lane.host
    fp32 = figures.read_file(results / f"outputs-{FP32_CPU}.jsonl")
    rows: list[figures.Row] = []
    for cpu in cpus:
        rows += figures.compare(cpu, figures.read_file(results / f"outputs-{cpu}.jsonl"), fp32)
    refused, checked = gate_decisions(results)
    table = f"Bundle `{lane.tag}`; FP32 answers from {FP32_CPU}.\n\n" + figures.markdown(rows, refused, checked)
    arm_fp32 = figures.read_file(results / "outputs-cortex-a72-fp32.jsonl")
    if arm_fp32:
        table += "\n" + figures.fp32_markdown("cortex-a72", arm_fp32, FP32_CPU, fp32)
    (results / "figures.md").write_text(table)
    print(table)
    if write_docs:
        docs = REPO / "docs" / "benchmarks.md"
        docs.write_text(figures.replace_between(docs.read_text(), BEGIN, END, table))
        say(f"wrote the table into {docs}")
    return all(r.passed or (r.cpu, r.runtime) in refused for r in rows if r.cpu in checked)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/arm64.sh", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated, of {', '.join(STEPS)} (default all)")
    p.add_argument("--cpu", action="append", choices=[*ARM, *X86], help="repeatable (default: all four)")
    p.add_argument("--bundle", type=Path, help="INT8 bundle directory (default: the demo bundle)")
    p.add_argument("--images", type=Path, default=default_images(), help="labelled held-out images")
    p.add_argument("--limit", type=int, default=100, help="held-out images per CPU (default 100)")
    p.add_argument("--files", default="", help="INT8 files to evaluate, e.g. onnxruntime/int8/224 (default all)")
    p.add_argument("--fp32-limit", type=int, default=50, help="images for the FP32-on-ARM check (default 50)")
    p.add_argument("--node-seconds", type=float, default=30.0, help="node run after its first prediction")
    p.add_argument("--node-max-seconds", type=float, default=600.0, help="... at most, waiting for every photo")
    p.add_argument("--write-docs", action="store_true", help="put the figures table into docs/benchmarks.md")
    p.add_argument("--fresh", action="store_true", help="rebuild the root and forget this bundle's results")
    args = p.parse_args(argv)
    steps = [s for s in args.steps.split(",") if s]
    if unknown := set(steps) - set(STEPS):
        p.error(f"unknown steps {', '.join(sorted(unknown))}; choose from {', '.join(STEPS)}")
    cpus: list[str] = args.cpu or [*ARM, *X86]
    work = cache_root()
    root = Root(work / "root")
    bundle = (args.bundle or default_bundle()).resolve()
    if "root" in steps and (args.fresh or not root.ready):
        say(f"building the Bookworm arm64 root in {root.path} (mmdebstrap, about 4 minutes)")
        work.mkdir(parents=True, exist_ok=True)
        root.build(work / "mmdebstrap.log")
    if not root.ready:
        say(f"no root in {root.path}: run the 'root' step first")
        return 1
    lane = Lane(root, bundle_tag(bundle))
    if args.fresh:
        shutil.rmtree(lane.host, ignore_errors=True)
    lane.host.mkdir(parents=True, exist_ok=True)
    say(f"bundle {bundle} ({lane.tag}); results in {lane.host}")
    for cpu in [c for c in cpus if c in ARM]:
        say(f"{cpu}: dot-product instructions {'present' if root.has_dotprod(cpu) else 'absent'} ({CPUS[cpu]})")
    ok = True
    if "install" in steps:
        step_install(root, bundle, work)
    if {"node", "bench", "eval"} & set(steps):
        stage(lane, bundle, fp32_bundle(bundle, work))
    arm = [c for c in cpus if c in ARM]
    if "node" in steps:
        ok &= step_node(lane, arm, bundle, args.node_seconds, args.node_max_seconds)
    if "bench" in steps:
        ok &= step_bench(lane, arm)
    if "eval" in steps:
        step_eval(lane, cpus, args.limit, args.fp32_limit, args.images, args.files)
    if "figures" in steps:
        ok &= step_figures(lane, cpus, args.write_docs)
    say("done: every bar holds" if ok else "done: some bar does NOT hold (above)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
