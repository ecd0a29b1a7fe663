"""Watch rules: from per-frame results to one ``start`` and one ``end`` per detection (docs/detections.md).

``tracker`` is the pure state machine, ``groups`` the named ImageNet groups (``cat``, ``dog``, ``bird`` ...),
``journal`` the open detections on disk (a node killed mid-detection ends it on restart), ``rulesfile`` the
rules from settings or a file. The node's glue is ``edge_node.node.watching``.
"""

from edge_node.watch.groups import GROUPS, expand
from edge_node.watch.journal import Journal, ended_by_restart
from edge_node.watch.rulesfile import load_rules
from edge_node.watch.tracker import Scored, Tracker, detection_id

__all__ = ["GROUPS", "Journal", "Scored", "Tracker", "detection_id", "ended_by_restart", "expand", "load_rules"]
