"""``edge-node dashboard``: the fleet in a web page, with operator actions (the ``dashboard`` extra).

Apart from the node's runtime: a Pi that only runs the node never imports this package. ``board`` holds the
fleet state and computes batched changes (pure), ``decode`` reads payloads leniently, ``security`` checks
tokens and origins (pure), ``server`` is the aiohttp edge and ``cli`` registers the command.
"""

from __future__ import annotations

__all__: list[str] = []
