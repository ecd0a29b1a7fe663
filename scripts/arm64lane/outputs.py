#!/usr/bin/env python3
"""Record every model file's top-5 answers on held-out labelled images, one JSON line per image, resumably.

The arm64 lane copies this file into the emulated root and runs it there with the node's own venv, so it may
import only what a node has (edge_node's runtime modules, numpy, OpenCV): no torch, nothing else from this
folder. It runs just as well natively or under ``qemu-x86_64 -cpu Haswell``.

Images are the folder's labelled images minus those the bundle was calibrated on (and its reference frames),
in a fixed pseudo-random order (sha256 of the file name), so that any prefix is a fair sample of classes and a
run cut short still gives paired figures: every line holds every file's answer for that one image. A run that
finds its output file continues after the last complete line. FP32 files come from a second bundle
(``--fp32``, built by ``edge-node model build --precision fp32``): the demo bundle ships INT8 files only.

    python outputs.py --bundle DEMO --fp32 FP32 --images imagenet-sample --limit 200 --out arm.jsonl
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

from edge_node.bundle import Bundle, open_bundle
from edge_node.modelzoo.evaluate import ModelFile, bundle_files, calibration_names, select_images
from edge_node.modelzoo.images import LabelledImage, load_bgr
from edge_node.runtimes import open_session
from edge_node.vision.preprocess import Preprocessor

__all__ = ["file_key", "held_out", "main"]


def file_key(f: ModelFile) -> str:
    """``<runtime>/<precision>/<resolution>``: how a file is named in the output lines."""
    return f"{f.runtime}/{f.precision}/{f.resolution}"


def _order(name: str) -> str:
    return hashlib.sha256(f"arm64-lane:{name}".encode()).hexdigest()


def held_out(bundle: Bundle, folder: Path) -> list[LabelledImage]:
    """Labelled images of ``folder`` the bundle never saw (calibration, reference frames), in the lane's order."""
    seen = calibration_names(bundle)
    if bundle.manifest.reference is not None:
        seen |= {Path(str(image.origin)).name for image in bundle.manifest.reference.images}
    images = [im for im in select_images(folder, exclude=seen) if im.label is not None]
    return sorted(images, key=lambda im: _order(im.path.name))


def _done(out: Path) -> list[str]:
    """Images already recorded in ``out``; a torn last line (a killed run) is dropped."""
    if not out.exists():
        return []
    lines = out.read_text().splitlines()
    names = []
    for line in lines:
        try:
            names.append(str(json.loads(line)["image"]))
        except (ValueError, KeyError):
            break
    if len(names) != len(lines):
        out.write_text("".join(line + "\n" for line in lines[: len(names)]))
    return names


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, required=True, help="the bundle whose files are measured")
    p.add_argument("--fp32", type=Path, help="a bundle with the FP32 files to compare with")
    p.add_argument("--images", type=Path, required=True, help="labelled images (<wnid>_*.JPEG)")
    p.add_argument("--limit", type=int, default=100, help="images to record in all (default 100)")
    p.add_argument("--only", default="", help="comma-separated file keys to run (default: all)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)

    bundle = open_bundle(args.bundle)
    files = bundle_files(bundle) + (bundle_files(open_bundle(args.fp32)) if args.fp32 else [])
    if args.only:
        wanted = set(args.only.split(","))
        files = [f for f in files if file_key(f) in wanted]
    spec = bundle.manifest.preprocess
    sessions = {file_key(f): (f, open_session(f.path, f.runtime, threads=args.threads)) for f in files}
    prep = {(f.resolution, f.layout): Preprocessor(spec, f.resolution, layout=f.layout) for f in files}
    images = held_out(bundle, args.images)[: args.limit]
    done = set(_done(args.out))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    todo = [im for im in images if im.path.name not in done]
    print(f"{len(done)} images recorded, {len(todo)} to go, {len(sessions)} files", file=sys.stderr, flush=True)
    with args.out.open("a") as fh:
        for n, image in enumerate(todo, 1):
            frame = load_bgr(image.path)
            line: dict[str, object] = {"image": image.path.name, "label": image.label, "outputs": {}}
            outputs: dict[str, object] = {}
            for key, (f, session) in sessions.items():
                logits = session.run(prep[(f.resolution, f.layout)](frame))[0]
                top = np.argsort(-logits)[:5]
                outputs[key] = {"top5": [int(i) for i in top], "logits": [round(float(logits[i]), 4) for i in top]}
            line["outputs"] = outputs
            fh.write(json.dumps(line, separators=(",", ":")) + "\n")
            fh.flush()
            if n % 10 == 0 or n == len(todo):
                rate = (time.monotonic() - start) / n
                print(f"{len(done) + n}/{len(images)} images, {rate:.1f} s per image", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
