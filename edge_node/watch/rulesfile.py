"""The rules a node starts with: ``EDGE_WATCH__RULES`` and the rules file (``EDGE_WATCH__RULES_FILE``)."""

from __future__ import annotations

from pydantic import TypeAdapter, ValidationError

from edge_node.config import WatchConfig
from edge_node.errors import ConfigError
from edge_node.wire.watch import WatchRule, WatchRules

__all__ = ["load_rules"]

_RULES: TypeAdapter[list[WatchRule]] = TypeAdapter(WatchRules)


def load_rules(cfg: WatchConfig) -> list[WatchRule]:
    """The settings' rules followed by the file's; ConfigError (saying which) for a bad file or a name used twice."""
    rules = list(cfg.rules)
    if cfg.rules_file is not None:
        try:
            data = cfg.rules_file.read_bytes()
        except OSError as exc:
            raise ConfigError(
                f"EDGE_WATCH__RULES_FILE={cfg.rules_file}: cannot read it ({exc.strerror}); fix the path or unset it"
            ) from exc
        try:
            rules += _RULES.validate_json(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ConfigError(
                f"EDGE_WATCH__RULES_FILE={cfg.rules_file}: {where + ': ' if where else ''}{first['msg']} "
                "(it must hold a JSON list of rules, docs/detections.md)"
            ) from exc
    try:
        return _RULES.validate_python([r.model_dump() for r in rules])
    except ValidationError as exc:
        raise ConfigError(f"watch rules: {exc.errors()[0]['msg']}") from exc
