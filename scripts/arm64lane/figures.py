"""INT8 against FP32 from the lane's recorded answers (``outputs.py`` lines): top-1 change and agreement. Pure.

Every INT8 file is compared with the FP32 file of the same runtime and resolution, image by image (paired),
from the same run or from another one (FP32 kernels do not depend on the dot-product instructions, so the
lane records FP32 once per architecture and reuses it: the caller says which run). Standard errors: the
agreement's is binomial, sqrt(p(1-p)/n); the top-1 change's is that of the mean per-image difference.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "MAX_DROP",
    "MIN_AGREEMENT",
    "Answers",
    "Row",
    "compare",
    "fp32_markdown",
    "markdown",
    "read_answers",
    "read_file",
    "replace_between",
    "verdict",
]

MAX_DROP = 0.004  # the bar: INT8 top-1 at most 0.4 points below FP32
MIN_AGREEMENT = 0.97  # ... with at least 97 % top-1 agreement

# image -> (label, {file key: top-1 class id})
Answers = dict[str, tuple[int, dict[str, int]]]


@dataclass(frozen=True, slots=True)
class Row:
    cpu: str
    runtime: str
    resolution: int
    images: int
    fp32_top1: float
    int8_top1: float
    agreement: float

    @property
    def change(self) -> float:
        return self.int8_top1 - self.fp32_top1

    @property
    def agreement_se(self) -> float:
        return math.sqrt(self.agreement * (1 - self.agreement) / self.images)

    change_se: float = 0.0

    @property
    def passed(self) -> bool:
        return self.change >= -MAX_DROP - 1e-9 and self.agreement >= MIN_AGREEMENT - 1e-9


def read_answers(lines: Iterable[str]) -> Answers:
    """Top-1 answers per image from ``outputs.py`` lines; a torn last line is ignored."""
    answers: Answers = {}
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        outputs: Mapping[str, Mapping[str, list[int]]] = record["outputs"]
        answers[str(record["image"])] = (int(record["label"]), {k: int(v["top5"][0]) for k, v in outputs.items()})
    return answers


def read_file(path: Path) -> Answers:
    return read_answers(path.read_text().splitlines()) if path.exists() else {}


def compare(cpu: str, int8: Answers, fp32: Answers) -> list[Row]:
    """One row per INT8 file in ``int8`` with an FP32 file of its runtime and resolution in ``fp32``,
    over the images both hold."""
    keys = sorted({k for _, outs in int8.values() for k in outs if k.split("/")[1] == "int8"})
    rows = []
    for key in keys:
        runtime, _, res = key.split("/")
        ref = f"{runtime}/fp32/{res}"
        pairs = [
            (label, outs[key], fp32[name][1][ref])
            for name, (label, outs) in int8.items()
            if key in outs and name in fp32 and ref in fp32[name][1]
        ]
        if not pairs:
            continue
        n = len(pairs)
        diffs = [(q == label) - (f == label) for label, q, f in pairs]
        mean = sum(diffs) / n
        var = sum((d - mean) ** 2 for d in diffs) / (n - 1) if n > 1 else 0.0
        rows.append(
            Row(
                cpu=cpu,
                runtime=runtime,
                resolution=int(res),
                images=n,
                fp32_top1=sum(f == label for label, _, f in pairs) / n,
                int8_top1=sum(q == label for label, q, _ in pairs) / n,
                agreement=sum(q == f for _, q, f in pairs) / n,
                change_se=math.sqrt(var / n),
            )
        )
    return sorted(rows, key=lambda r: (r.cpu, r.runtime, -r.resolution))


def verdict(row: Row, refused: Collection[tuple[str, str]], checked: Collection[str]) -> str:
    """The issue's bar for one file: within the bars, or refused by the node on that CPU (``refused`` holds
    (cpu, runtime) pairs whose INT8 files the node's gate turned down; ``checked``, the CPUs the node ran on),
    or neither."""
    if row.passed:
        return "within the bars"
    if row.cpu not in checked:
        return "**below the bars**; the node was not run on this CPU"
    if (row.cpu, row.runtime) in refused:
        return "below the bars; the node refuses it here"
    return "**below the bars and served**"


def markdown(rows: Iterable[Row], refused: Collection[tuple[str, str]] = (), checked: Collection[str] = ()) -> str:
    """The rows as the table docs/benchmarks.md carries; ``refused`` and ``checked`` as in :func:`verdict`."""
    out = [
        "| CPU | runtime | px | images | FP32 top-1 | INT8 top-1 | change (± SE) | agreement (± SE) | bars |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        verdict_ = verdict(r, refused, checked)
        out.append(
            f"| {r.cpu} | {r.runtime} | {r.resolution} | {r.images} | {r.fp32_top1:.1%} | {r.int8_top1:.1%} | "
            f"{100 * r.change:+.1f} (± {100 * r.change_se:.1f}) | {r.agreement:.1%} (± {100 * r.agreement_se:.1f}) | "
            f"{verdict_} |"
        )
    return "\n".join(out) + "\n"


def replace_between(text: str, begin: str, end: str, body: str) -> str:
    """``text`` with what lies between the marker lines ``begin`` and ``end`` replaced by ``body``."""
    head, sep, rest = text.partition(begin)
    _, sep2, tail = rest.partition(end)
    if not sep or not sep2:
        raise ValueError(f"markers {begin} ... {end} not found: add them where the table belongs")
    return f"{head}{begin}\n{body}{end}{tail}"


def fp32_markdown(cpu: str, answers: Answers, ref_cpu: str, ref: Answers) -> str:
    """How often FP32 files give the same top-1 on ``cpu`` as on ``ref_cpu``: the check that lets the lane
    compare INT8 answers on every CPU with one machine's FP32 answers."""
    keys = sorted({k for _, outs in answers.values() for k in outs if k.split("/")[1] == "fp32"})
    out = [f"| FP32 file | images | same top-1 on {cpu} as on {ref_cpu} |", "|---|---:|---:|"]
    for key in keys:
        pairs = [(outs[key], ref[n][1][key]) for n, (_, outs) in answers.items() if n in ref and key in ref[n][1]]
        if pairs:
            same = sum(a == b for a, b in pairs) / len(pairs)
            out.append(f"| {key} | {len(pairs)} | {same:.1%} |")
    return "\n".join(out) + "\n"
