"""``edge-node monitor``, ``simulate``, ``ctl`` and ``notify``: the operator's fleet tools.

Broker settings come from the same ``EDGE_MQTT__*`` environment as the node's (``edge_node.config``), so
one ``.env`` serves the node and the tools; ``--prefix`` overrides ``EDGE_TOPIC_PREFIX``.
"""

from __future__ import annotations

import argparse

from edge_node.config import load_settings
from edge_node.fleet import ctl, notify

__all__ = ["register"]


def _prefix_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prefix", help="topic prefix (default: EDGE_TOPIC_PREFIX or 'ghostpi')")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    monitor = sub.add_parser("monitor", help="live dashboard of every node on the broker")
    monitor.add_argument("--once", action="store_true", help="collect, print one snapshot and exit")
    monitor.add_argument("--json", action="store_true", help="with --once: print the snapshot as JSON")
    monitor.add_argument("--timeout", type=float, default=5.0, metavar="S", help="--once: collect at most S s")
    monitor.add_argument(
        "--stale", type=float, default=30.0, metavar="S", help="flag online nodes silent for more than S s"
    )
    monitor.add_argument(
        "--no-predictions", action="store_true", help="follow heartbeats and state only (fleets of thousands)"
    )
    _prefix_arg(monitor)
    monitor.set_defaults(handler=_monitor)

    simulate = sub.add_parser("simulate", help="run a fleet of simulated nodes against the broker")
    simulate.add_argument("--nodes", type=int, default=10, metavar="N")
    simulate.add_argument("--rate", type=float, default=10.0, metavar="HZ", help="predictions/s per node")
    simulate.add_argument("--duration", type=float, metavar="S", help="stop after S s (default: until Ctrl-C)")
    simulate.add_argument("--id-prefix", default="sim-", metavar="P", help="node ids are P001, P002, ...")
    simulate.add_argument("--heartbeat", type=float, default=10.0, metavar="S", help="heartbeat interval")
    simulate.add_argument("--keepalive", type=int, default=10, metavar="S", help="MQTT keepalive per node")
    simulate.add_argument("--kill", type=int, default=0, metavar="K", help="nodes to crash (no DISCONNECT)")
    simulate.add_argument("--kill-after", type=float, metavar="S", help="crash --kill nodes S s after start")
    simulate.add_argument("--seed", type=int, help="random seed, for repeatable runs")
    simulate.add_argument(
        "--no-snapshots", action="store_true", help="refuse the snapshot command, like a node with snapshots off"
    )
    simulate.add_argument(
        "--events", type=float, metavar="S", help="each node sends a numbered QoS 1 event every S s (loss tests)"
    )
    simulate.add_argument("--progress", type=float, metavar="S", help="print a 'progress' JSON line every S s")
    simulate.add_argument(
        "--procs", type=int, default=1, metavar="P", help="spread the nodes over P processes (--kill: per process)"
    )
    simulate.add_argument("--first-id", type=int, default=1, help=argparse.SUPPRESS)  # a --procs child's share
    simulate.add_argument("--total", type=int, help=argparse.SUPPRESS)
    _prefix_arg(simulate)
    simulate.set_defaults(handler=_simulate)

    ctl.register(sub)
    notify.register(sub)


def _monitor(args: argparse.Namespace) -> int:
    from edge_node.fleet.monitor import MonitorOptions, run_live, run_once

    settings = load_settings()
    opts = MonitorOptions(
        prefix=args.prefix or settings.topic_prefix,
        timeout=args.timeout,
        stale=args.stale,
        predictions=not args.no_predictions,
    )
    if args.once:
        return run_once(settings.mqtt, opts, as_json=args.json)
    return run_live(settings.mqtt, opts)


def _simulate(args: argparse.Namespace) -> int:
    import asyncio

    if args.procs > 1:
        from edge_node.fleet.simprocs import run_procs

        return run_procs(_simulate_argv(args), args.nodes, args.procs)

    from edge_node.fleet.simulate import SimOptions, SimulatedFleet

    settings = load_settings()
    opts = SimOptions(
        nodes=args.nodes,
        rate=args.rate,
        duration=args.duration,
        id_prefix=args.id_prefix,
        topic_prefix=args.prefix or settings.topic_prefix,
        heartbeat=args.heartbeat,
        keepalive=args.keepalive,
        kill=args.kill,
        kill_after=args.kill_after,
        seed=args.seed,
        snapshots=not args.no_snapshots,
        events=args.events,
        progress=args.progress,
        first_id=args.first_id,
        total=args.total,
    )

    async def main() -> int:
        stats = await SimulatedFleet(settings.mqtt, opts).run()
        return 0 if stats.nodes_online == opts.nodes else 1

    return asyncio.run(main())


def _simulate_argv(args: argparse.Namespace) -> list[str]:
    """The simulate options of ``args`` again (but --nodes and --procs): what each --procs child gets."""
    out = ["--rate", str(args.rate), "--id-prefix", args.id_prefix, "--heartbeat", str(args.heartbeat)]
    out += ["--keepalive", str(args.keepalive), "--kill", str(args.kill)]
    for name in ("duration", "kill_after", "seed", "events", "progress", "prefix"):
        value = getattr(args, name)
        if value is not None:
            out += [f"--{name.replace('_', '-')}", str(value)]
    return out + (["--no-snapshots"] if args.no_snapshots else [])
