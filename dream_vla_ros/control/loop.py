"""A fixed-rate loop on its own thread, paced by absolute deadlines.

The control tick never waits behind ROS callbacks: it runs on a dedicated
thread that sleeps until each deadline on the monotonic clock (and spins for
the last fraction of a millisecond, which costs little CPU and removes most of
the scheduler's wake-up latency). Overruns skip ahead rather than bursting.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

SPIN_S = 0.0003  # busy-wait for the last 0.3 ms before a deadline


class PeriodicLoop:
    def __init__(
        self,
        rate_hz: float,
        step: Callable[[], None],
        name: str = "control-loop",
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        if not rate_hz > 0:
            raise ValueError(f"loop rate must be > 0 Hz, got {rate_hz}")
        self.period = 1.0 / rate_hz
        self._step = step
        self._on_error = on_error
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.overruns = 0
        self.wake_times: list[float] | None = None  # set to [] to record (benchmarks)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 1.0) -> None:
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread.is_alive() and not self._stop.is_set()

    def _run(self) -> None:
        deadline = time.monotonic() + self.period
        while not self._stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining > SPIN_S:
                self._stop.wait(remaining - SPIN_S)
            while time.monotonic() < deadline:
                pass
            if self.wake_times is not None:
                self.wake_times.append(time.monotonic())
            try:
                self._step()
            except Exception as exc:  # the loop must outlive a bad tick; report it
                if self._on_error is None:
                    raise
                self._on_error(exc)
            deadline += self.period
            now = time.monotonic()
            if now > deadline:
                missed = int((now - deadline) / self.period) + 1
                self.overruns += missed
                deadline += missed * self.period
