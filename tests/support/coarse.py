"""A small real "own classes" dataset: the ImageNet sample's 500 photos grouped into 5 coarse classes.

The grouping is fixed and uses ImageNet class indices (sorted-wnid order, ``imagenet_classes.tsv``), which
the file name's wnid gives. The groups are whole, unambiguous parts of the ImageNet hierarchy; the sample
holds one photo for every other class, so each group gets about half of its range:

- ``dog``: 151-268, the dog breeds (59 photos)
- ``bird``: 7-24, 80-100 and 127-146 (30)
- ``food``: 924-957 and 959-965, dishes, vegetables and fruit (not hay, drinks or cups) (20)
- ``vehicle``: the land vehicles in ``VEHICLES`` (cars, trucks, buses, trains, bicycles, ...) (18)
- ``other``: every remaining photo (373): a heterogeneous catch-all (cats, wolves, insects, tools, scenery,
  ...), as real deployments have ("no parcel", "empty"), and 20x the smallest class.

``with_other=False`` leaves ``other`` out (4 coherent classes, 127 photos). Files are symlinked, never copied.
"""

from __future__ import annotations

from pathlib import Path

from edge_node.modelzoo.labels import wnid_index

__all__ = ["GROUPS", "VEHICLES", "coarse_class", "make_coarse_dataset"]

VEHICLES = frozenset(
    {407, 436, 444, 466, 468, 511, 547, 555, 565, 569, 573, 575, 586, 595, 603, 609, 612, 627, 654, 656, 661}
    | {665, 670, 671, 675, 705, 717, 734, 751, 757, 779, 802, 803, 817, 820, 829, 847, 856, 864, 866, 867}
    | {870, 874, 880}
)
GROUPS: dict[str, frozenset[int]] = {
    "dog": frozenset(range(151, 269)),
    "bird": frozenset([*range(7, 25), *range(80, 101), *range(127, 147)]),
    "food": frozenset([*range(924, 958), *range(959, 966)]),
    "vehicle": VEHICLES,
}


def coarse_class(index: int, *, with_other: bool = True) -> str | None:
    for name, members in GROUPS.items():
        if index in members:
            return name
    return "other" if with_other else None


def make_coarse_dataset(sample: Path, out: Path, *, with_other: bool = True) -> Path:
    """``out/<class>/<file>`` symlinks to the sample's photos; return ``out``."""
    table = wnid_index()
    for photo in sorted(sample.glob("*.JPEG")):
        group = coarse_class(table[photo.name.split("_", 1)[0]], with_other=with_other)
        if group is None:
            continue
        target = out / group / photo.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(photo.resolve())
    return out
