"""scripts/constraints.py as a module, and a target file's pins as the roles install them."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

from tests.support.paths import REPO

__all__ = ["DIR", "constraints", "header", "pins"]

DIR = REPO / "deploy" / "constraints"


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ghostpi_constraints", REPO / "scripts" / "constraints.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look the module up while the class is built
    spec.loader.exec_module(module)
    return module


constraints = _script()


def header(path: Path) -> dict[str, str]:
    """The file's ``# python:``, ``# platform:`` and ``# system-numpy:`` lines."""
    return dict(re.findall(r"^# (python|platform|system-numpy): (.+)$", path.read_text(), flags=re.MULTILINE))


def pins(path: Path) -> dict[str, str]:
    """Normalised name -> version, numpy included where the file leaves it to apt (its ``# system-numpy:``
    header: the version the pins were resolved with)."""
    found: dict[str, str] = constraints.read_pins(path)
    if numpy := header(path).get("system-numpy"):
        found["numpy"] = numpy
    return found
