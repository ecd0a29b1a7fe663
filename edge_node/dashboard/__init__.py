"""``edge-node dashboard``: the fleet in a web page, with operator actions (the ``dashboard`` extra).

Apart from the node's runtime: a Pi that only runs the node never imports this package. ``inbox`` keeps what
the MQTT thread receives, bounded; ``board`` holds the fleet state and computes batched changes (pure),
``fleet.decode`` reads payloads leniently (but refuses numbers a browser cannot read), ``security`` checks tokens
and origins and ``limits`` rates per address (pure), ``exposure`` decides what a bind requires (TLS, Host
names, the token to watch), ``detections`` keeps the detections seen for the timeline (pure, bounded),
``server`` is the aiohttp edge and ``cli`` registers the command.
"""

from __future__ import annotations

__all__: list[str] = []
