"""Time-indexed interpolation of action chunks, with splicing.

A chunk is turned into a piecewise cubic Hermite trajectory on the ROS clock.
Its first knot is the controller's current command (position and velocity) at
the splice time, so a new chunk joins the old motion with no jump in position
or velocity (C1). Points already in the past are dropped; this is how inference
latency is compensated rather than accumulated. After the last point the
trajectory holds the last target with zero velocity.
"""

from __future__ import annotations

import bisect

import numpy as np

from dream_vla_ros.control.validation import TimedChunk


class HermiteTrajectory:
    """Piecewise cubic Hermite curve through knots (t_i, q_i, v_i)."""

    def __init__(self, times: np.ndarray, positions: np.ndarray, velocities: np.ndarray) -> None:
        if times.ndim != 1 or len(times) < 1 or np.any(np.diff(times) <= 0):
            raise ValueError("knot times must be a non-empty, strictly increasing 1-D array")
        self.times = times  # (K,)
        self.positions = positions  # (K, J)
        self.velocities = velocities  # (K, J)
        self._times_list = times.tolist()  # bisect on a list is faster than on an ndarray

    @property
    def end_time(self) -> float:
        return self._times_list[-1]

    def sample(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """Position and velocity (J,) at time t; clamped to the end knots outside the span."""
        if t <= self._times_list[0]:
            return self.positions[0].copy(), self.velocities[0].copy()
        if t >= self._times_list[-1]:
            return self.positions[-1].copy(), np.zeros_like(self.positions[-1])
        i = bisect.bisect_right(self._times_list, t) - 1
        t0, t1 = self._times_list[i], self._times_list[i + 1]
        h = t1 - t0
        s = (t - t0) / h
        p0, p1 = self.positions[i], self.positions[i + 1]
        m0, m1 = self.velocities[i] * h, self.velocities[i + 1] * h
        s2, s3 = s * s, s * s * s
        h00, h10, h01, h11 = 2 * s3 - 3 * s2 + 1, s3 - 2 * s2 + s, -2 * s3 + 3 * s2, s3 - s2
        q = h00 * p0 + h10 * m0 + h01 * p1 + h11 * m1
        d00, d10, d01, d11 = 6 * s2 - 6 * s, 3 * s2 - 4 * s + 1, -6 * s2 + 6 * s, 3 * s2 - 2 * s
        v = (d00 * p0 + d10 * m0 + d01 * p1 + d11 * m1) / h
        return q, v


def hold(position: np.ndarray, t: float) -> HermiteTrajectory:
    """A trajectory that stays at `position`."""
    p = np.asarray(position, dtype=np.float64).reshape(1, -1)
    return HermiteTrajectory(np.array([t]), p.copy(), np.zeros_like(p))


def splice(
    chunk: TimedChunk,
    now_s: float,
    current_position: np.ndarray,
    current_velocity: np.ndarray,
    min_lead_s: float = 1e-3,
) -> HermiteTrajectory:
    """Trajectory from the current command at `now_s` through the chunk's future points.

    Knot velocities: the current velocity at the splice knot, centred finite
    differences at interior knots, zero at the last knot (the arm comes to rest
    where the chunk ends unless a newer chunk arrives first).
    """
    keep = chunk.times_s > now_s + min_lead_s
    t_future = chunk.times_s[keep]  # (K-1,)
    q_future = chunk.positions[keep]  # (K-1, J)
    times = np.concatenate(([now_s], t_future))  # (K,)
    positions = np.vstack((current_position[None, :], q_future))  # (K, J)
    velocities = np.zeros_like(positions)  # (K, J)
    velocities[0] = current_velocity
    if len(times) > 2:
        dt = (times[2:] - times[:-2])[:, None]  # (K-2, 1)
        velocities[1:-1] = (positions[2:] - positions[:-2]) / dt
    return HermiteTrajectory(times, positions, velocities)


def minimum_jerk(s: np.ndarray | float) -> np.ndarray:
    """10s^3 - 15s^4 + 6s^5 on [0, 1]: zero velocity and acceleration at both ends."""
    s = np.clip(np.asarray(s, dtype=np.float64), 0.0, 1.0)
    return s**3 * (10.0 - 15.0 * s + 6.0 * s * s)
