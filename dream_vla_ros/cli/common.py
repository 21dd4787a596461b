"""What the commands share: KEY=VALUE option pairs."""

from __future__ import annotations


def pairs(words: list[str], what: str) -> tuple[tuple[str, str], ...]:
    """['a=b', ...] -> (('a', 'b'), ...); a word without '=' is a ValueError naming it."""
    out = []
    for word in words:
        key, sep, value = word.partition("=")
        if not sep or not key or not value:
            raise ValueError(f"{what} '{word}' is not KEY=VALUE")
        out.append((key, value))
    return tuple(out)
