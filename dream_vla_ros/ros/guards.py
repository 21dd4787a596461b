"""What a node does with a message it cannot use: it refuses it, counts it by topic,
logs the reason (throttled) and shows it on /diagnostics as a WARN at once; it
never dies of it. `InputGuard.callback` wraps a subscription callback so that an
exception inside it is refused the same way."""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from rclpy.node import Node

RECENT_S = 5.0  # a refusal shows on /diagnostics for this long
REPORT_EVERY_S = 0.2  # at most this often an immediate /diagnostics report


class MessageRefused(ValueError):
    """A message the node cannot use; the text names the problem and the fix."""


def joint_positions(msg: Any, names: Sequence[str]) -> np.ndarray:
    """The positions of `names` (any order in the message), finite; else MessageRefused."""
    got = list(msg.name)
    if len(msg.position) != len(got):
        raise MessageRefused(
            f"JointState has {len(got)} names but {len(msg.position)} positions; "
            "send one position per name"
        )
    index = {n: i for i, n in enumerate(got)}
    missing = [n for n in names if n not in index]
    if missing:
        raise MessageRefused(
            f"JointState lacks {', '.join(missing)} (it names {got}); publish {', '.join(names)}"
        )
    q = np.array([msg.position[index[n]] for n in names], dtype=np.float64)
    bad = [n for n, v in zip(names, q) if not math.isfinite(v)]
    if bad:
        raise MessageRefused(
            f"JointState has non-finite positions for {', '.join(bad)}; "
            "fix the publisher (a driver fault or an uninitialised value)"
        )
    return q


class InputGuard:
    """The refusals of one node: counts by topic, the newest reason, throttled logs,
    and an immediate /diagnostics report through `report` (rate-limited)."""

    def __init__(self, node: Node, report: Callable[[], None] | None = None) -> None:
        self.node = node
        self.report = report
        self._lock = threading.Lock()
        self.counts: dict[str, int] = {}
        self._last: tuple[float, str] | None = None
        self._last_report = 0.0

    def refuse(self, topic: str, reason: str) -> None:
        now = time.monotonic()
        with self._lock:
            self.counts[topic] = self.counts.get(topic, 0) + 1
            self._last = (now, f"refused a message on {topic}: {reason}")
            report = self.report is not None and now - self._last_report >= REPORT_EVERY_S
            if report:
                self._last_report = now
        self.node.get_logger().warning(
            f"refused a message on {topic}: {reason}", throttle_duration_sec=2.0
        )
        if report and self.report is not None:
            # a failed report (the context shutting down) leaves the log line above
            with contextlib.suppress(Exception):
                self.report()

    def warning(self) -> str:
        """The newest refusal while it is recent (for a WARN status), else ''."""
        with self._lock:
            if self._last is None or time.monotonic() - self._last[0] > RECENT_S:
                return ""
            return self._last[1]

    def summary(self) -> dict[str, str]:
        with self._lock:
            return {f"refused {topic}": str(n) for topic, n in sorted(self.counts.items())}

    def callback(self, topic: str, handler: Callable[[Any], None]) -> Callable[[Any], None]:
        """`handler` for a subscription: MessageRefused and any other exception it
        raises become a refusal; the node goes on."""

        def guarded(msg: Any) -> None:
            try:
                handler(msg)
            except MessageRefused as exc:
                self.refuse(topic, str(exc))
            except Exception as exc:  # a bad message must not take the node down
                self.refuse(topic, f"{type(exc).__name__}: {exc}")

        return guarded
