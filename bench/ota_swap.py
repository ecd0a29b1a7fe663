"""How smooth is an OTA model swap? Predictions from a 30 fps synthetic camera during real updates.

For each update (download from a loopback HTTP server, verify, build + warm up, swap, health check) it
measures, from the prediction timestamps:
  - the normal interval: median gap between predictions in the 2 s before the update;
  - the largest gap during the whole update, and the gap across the swap itself (last old -> first new);
  - frames the capture slot dropped during the update vs during a same-length quiet window before it.

Run: nice -n 10 .venv/bin/python -m bench.ota_swap [--updates 5] [--model tiny|slow]
``tiny`` infers in ~0.1 ms; ``slow`` (tests/support/bundles.py broken="slow" at 160 px) takes ~20 ms per frame,
which leaves the CPU about as busy as a real INT8 model on a Pi 4.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from edge_node.bundle.archive import pack
from edge_node.config import ModelConfig, OtaConfig
from edge_node.messages import UpdateModel
from edge_node.ota.download import sha256_file
from tests.support.bundles import make_key, make_tiny_bundle
from tests.support.ota_harness import LiveNode, live_node
from tests.support.ota_http import serving


def _gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


async def _one(node: LiveNode, url: str, sha: str, version: str) -> dict[str, float]:
    quiet_start = time.monotonic()
    dropped0 = node.grabber.slot.dropped
    await asyncio.sleep(2.0)
    quiet_dropped = node.grabber.slot.dropped - dropped0
    quiet_s = time.monotonic() - quiet_start
    before = [t for t, _ in node.results if t >= quiet_start]
    normal = statistics.median(_gaps(before))

    start = time.monotonic()
    dropped1 = node.grabber.slot.dropped
    await node.updater.handle(
        UpdateModel(cmd="update_model", id=uuid.uuid4().hex, url=url, sha256=sha, version=version)
    )
    end = time.monotonic()
    ev = node.sink.events[-1]
    if not ev.ok:
        raise SystemExit(f"update failed: {ev.error}")
    during = [(t, v) for t, v in node.results if start - 0.2 <= t <= end + 0.2]
    switch = next(i for i, (_, v) in enumerate(during) if v == version)
    swap_gap = during[switch][0] - during[switch - 1][0]
    return {
        "normal_ms": normal * 1000,
        "max_gap_ms": max(_gaps([t for t, _ in during])) * 1000,
        "swap_gap_ms": swap_gap * 1000,
        "update_s": end - start,
        "dropped_update": node.grabber.slot.dropped - dropped1,
        "dropped_quiet_same_len": quiet_dropped * (end - start) / quiet_s,
    }


async def main(updates: int, model: str) -> None:
    broken = "slow" if model == "slow" else None
    res = (160,) if model == "slow" else (224, 192, 160)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        pub = make_key(root / "k.pem")
        factory = make_tiny_bundle(
            root / "factory", version="1.0.0", resolutions=res, key=root / "k.pem", broken=broken
        )
        site = root / "site"
        site.mkdir()
        versions = [f"{i + 2}.0.0" for i in range(updates)]
        for v in versions:
            b = make_tiny_bundle(root / v, version=v, resolutions=res, key=root / "k.pem", broken=broken)
            pack(b, site / f"{v}.tar.gz")
        cfg = OtaConfig(trusted_keys=[pub], allow_http=True, health_frames=20, health_max_latency_ms=500)
        rows = []
        with serving(site) as srv:
            async with live_node(root / "ota", factory, cfg, model=ModelConfig(threads=1)) as node:
                for v in versions:
                    archive = site / f"{v}.tar.gz"
                    rows.append(await _one(node, f"{srv.url}/{v}.tar.gz", sha256_file(archive), v))
    print(f"model={model} resolutions={res} updates={updates} (30 fps synthetic camera, 1 ORT thread)")
    keys = list(rows[0])
    print(" ".join(f"{k:>22}" for k in keys))
    for r in rows:
        print(" ".join(f"{r[k]:>22.1f}" for k in keys))
    worst = max(r["max_gap_ms"] / r["normal_ms"] for r in rows)
    swap = max(r["swap_gap_ms"] / r["normal_ms"] for r in rows)
    print(f"worst max_gap/normal = {worst:.2f}x, worst swap_gap/normal = {swap:.2f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--updates", type=int, default=5)
    parser.add_argument("--model", choices=["tiny", "slow"], default="tiny")
    args = parser.parse_args()
    asyncio.run(main(args.updates, args.model))
