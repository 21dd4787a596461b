"""What the commands share: command groups with actions, KEY=VALUE option pairs."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def pairs(words: list[str], what: str) -> tuple[tuple[str, str], ...]:
    """['a=b', ...] -> (('a', 'b'), ...); a word without '=' is a ValueError naming it."""
    out = []
    for word in words:
        key, sep, value = word.partition("=")
        if not sep or not key or not value:
            raise ValueError(f"{what} '{word}' is not KEY=VALUE")
        out.append((key, value))
    return tuple(out)


def command_group(
    sub, name: str, help_text: str, run: Callable[[argparse.Namespace], int]
) -> argparse._SubParsersAction:
    """`dream-vla NAME ACTION ...`: the group's parser runs `run`; returns the
    subparsers its actions are added to (`args.action` names the one chosen)."""
    parser = sub.add_parser(name, help=help_text)
    parser.set_defaults(run=run)
    return parser.add_subparsers(dest="action", required=True)
