"""Ctrl-C that ends a long collection between episodes (no ROS imports)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class StopAfterEpisode:
    """Ctrl-C (SIGINT) sets `requested` instead of interrupting, so that no episode is
    cut in half; a second Ctrl-C raises KeyboardInterrupt as usual. Only where Ctrl-C
    would interrupt (the main thread, Python's own handler); a process that ignores
    SIGINT (started in the background) keeps ignoring it."""

    requested = False

    @contextmanager
    def installed(self) -> Iterator[StopAfterEpisode]:
        previous = signal.getsignal(signal.SIGINT)
        main = threading.current_thread() is threading.main_thread()
        if not main or previous is not signal.default_int_handler:
            yield self
            return

        def handler(_signum, _frame) -> None:
            self.requested = True
            signal.signal(signal.SIGINT, previous)

        signal.signal(signal.SIGINT, handler)
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, previous)
