"""The measured arm replayed in the physics world: joint states in, the arm's pose
for each physics tick out (the `sim_world` node's place task; no ROS imports).

The world shows the arm where the joint states had it `lag_s` ago, interpolated
between the two states around that time: joint states come at 50 Hz, and an arm
that jumped to each newest state, then stood still until the next, shook the held
cube out of the fingers. On a loaded host they also come late and in bursts; an
arm on the wall clock then runs past the newest state, stands there, and jumps
when the burst arrives. So the replay's clock never passes the newest state and
advances at most `catch_up` times the physics time: the arm waits for late states
and then catches up at most 1.5 times as fast as it moved. With the expert's
states delivered in bursts 200 or 300 ms apart, the wall-clock arm dropped the
held cube on 3 and 6 of 6 layouts, this one on none (test_sim_place.py).
"""

from __future__ import annotations

from collections import deque

import numpy as np

CATCH_UP = 1.5  # the arm's clock runs at most this much faster than the physics


class ArmReplay:
    def __init__(self, lag_s: float, catch_up: float | None = CATCH_UP, keep: int = 200) -> None:
        """`catch_up` None: the wall-clock arm (now - lag_s, whatever has arrived)."""
        self.lag_s, self.catch_up = lag_s, catch_up
        self.history: deque[tuple[float, np.ndarray, float]] = deque(maxlen=keep)
        self.t: float | None = None  # the joint-state time the world shows
        self.late_ticks = 0  # ticks the arm spent behind `now - lag_s` (late states)

    def add(self, stamp: float, q: np.ndarray, effort: float) -> None:
        """A joint state (stamp [s], 7 positions, gripper effort [N m]); one not newer
        than the newest is ignored."""
        if not self.history or stamp > self.history[-1][0]:
            self.history.append((stamp, np.asarray(q, dtype=np.float64), float(effort)))

    def at(self, t: float) -> tuple[float, np.ndarray, float]:
        """(time, positions, effort) of the arm at `t`: linear between the joint states
        around it, the nearest one outside them; the effort of the older one."""
        h = self.history
        if t <= h[0][0]:
            return h[0]
        if t >= h[-1][0]:
            return h[-1]
        for (t0, q0, e0), (t1, q1, _) in zip(reversed(list(h)[:-1]), reversed(h)):
            if t0 <= t:
                return t, q0 + (t - t0) / (t1 - t0) * (q1 - q0), e0
        return h[0]  # pragma: no cover - the bounds above cover every t

    def advance(self, now_s: float, physics_s: float) -> tuple[float, np.ndarray, float] | None:
        """The arm for a physics tick of `physics_s` ending at `now_s` (None before the
        first joint state)."""
        if not self.history:
            return None
        goal = now_s - self.lag_s
        t = goal
        if self.catch_up is not None:
            t = min(goal, self.history[-1][0])
            if self.t is not None:
                t = max(self.t, min(t, self.t + self.catch_up * physics_s))
            if t < goal - 1e-3:
                self.late_ticks += 1
        self.t = t
        return self.at(t)

    def to_newest(self) -> np.ndarray | None:
        """Jump the arm's clock to the newest state (a new layout); its positions."""
        if not self.history:
            return None
        self.t = self.history[-1][0]
        return self.history[-1][1]
