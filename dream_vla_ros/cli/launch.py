"""`dream-vla launch [GRAPH [name:=value ...] [--print]]`: run a node graph without
ros2 launch; without a graph, list the graphs and their arguments."""

from __future__ import annotations

import argparse
import shlex
import sys

from dream_vla_ros.dds import DdsError
from dream_vla_ros.graphs import GRAPHS, LaunchError, graph, node_command, parse_arguments
from dream_vla_ros.launcher import launch


def add_parsers(sub) -> None:
    p = sub.add_parser("launch", help="run a node graph without ros2 launch")
    p.add_argument("graph", nargs="?", help=f"one of {sorted(GRAPHS)}; none: list them")
    p.add_argument(
        "args",
        nargs=argparse.REMAINDER,
        help="name:=value launch arguments; --print: show commands",
    )
    p.set_defaults(run=run)


def _list_graphs() -> None:
    for g in GRAPHS.values():
        print(f"{g.name}: {g.description}\n  nodes: {', '.join(n.name for n in g.nodes)}")
        for arg in g.arguments:
            choices = f" [{'|'.join(arg.choices)}]" if arg.choices else ""
            print(f"  {arg.name}:={arg.default!r}{choices}  {arg.description}")


def run(args: argparse.Namespace) -> int:
    try:
        if args.graph is None:
            _list_graphs()
            return 0
        g = graph(args.graph)
        show = "--print" in args.args
        values = parse_arguments(g, [a for a in args.args if a != "--print"])
        if show:
            for node in g.nodes:
                print(f"{node.name}: {shlex.join(node_command(node, values))}")
            return 0
        return launch(g, values)
    except (LaunchError, DdsError) as exc:
        print(f"dream-vla launch: {exc}", file=sys.stderr)
        return 2
