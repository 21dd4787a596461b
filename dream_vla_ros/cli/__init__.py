"""The `dream-vla` command.

    dream-vla demo                       the closed loop in the MuJoCo world
    dream-vla launch [GRAPH arg:=value]  run a node graph without ros2 launch
    dream-vla dataset build|recover      episodes -> LeRobot dataset; crash recovery
    dream-vla play BAG                   publish a bag with its timing and /clock
    dream-vla eval-bag BAG               open-loop policy evaluation over a bag
    dream-vla train RECIPE | merge       finetuning; LoRA -> merged weights
    dream-vla convert | export SRC DST   official checkpoints -> this layout and back
    dream-vla sim ground|collect|evaluate|pipeline|proxy
                                         the touch and place tasks in the MuJoCo world

An error the user can cause ends in one line on stderr and exit status 2.
"""

# One module per command group (demo, launch, data, train, model, sim), each with
# `add_parsers(sub)` and a `run(args) -> int` set as the parsers' default.

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

from dream_vla_ros.cli import data, demo, launch, model, sim, train

GROUPS = (demo, launch, data, train, model, sim)


class Parser(argparse.ArgumentParser):
    """A usage error is one line too: what is wrong and where the help is."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="dream-vla", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    # KEY=VALUE overrides may also follow an option (`train RECIPE --no-progress a.b=1`),
    # which argparse alone leaves unrecognised
    args, extra = parser.parse_known_args(argv)
    if extra:
        if hasattr(args, "overrides") and all("=" in a and not a.startswith("-") for a in extra):
            args.overrides = [*args.overrides, *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    sys.exit(args.run(args))


if __name__ == "__main__":
    main()
