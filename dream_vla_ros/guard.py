"""How a command ends on an error the user can cause: one line on stderr, exit 2."""

from __future__ import annotations

import sys
from collections.abc import Callable


def guarded(label: str, errors: tuple[type[BaseException], ...], body: Callable[[], int]) -> int:
    """Run a command: its known errors become one line on stderr and exit status 2;
    Ctrl-C is exit status 130, not a traceback."""
    try:
        return body()
    except KeyboardInterrupt:
        return 130
    except errors as exc:
        print(f"dream-vla {label}: {exc}", file=sys.stderr)
        return 2
