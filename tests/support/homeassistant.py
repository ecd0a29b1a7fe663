"""What Home Assistant's MQTT select does with the discovery message it was given, for tests.

A user (or an automation) picks an option; HA renders the select's command template (``cmd_tpl``) with that
option as ``value``, or sends the option as it is when there is none, and publishes it to ``cmd_t``. HA takes
both from the discovery message, which the node itself writes: so whatever a (stolen) node puts there is what
HA's identity sends.
"""

from __future__ import annotations

from collections.abc import Mapping

import jinja2

__all__ = ["select_command"]


def select_command(select: Mapping[str, object], option: str) -> tuple[str, bytes]:
    """(topic, payload) HA publishes when ``option`` is picked in the select component ``select``."""
    template = select.get("cmd_tpl")
    payload = option if template is None else jinja2.Environment().from_string(str(template)).render(value=option)
    return str(select["cmd_t"]), payload.encode()
