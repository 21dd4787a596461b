"""Time-indexed interpolation of action chunks, with splicing.

A chunk is turned into a plan on the ROS clock: a shape-preserving piecewise cubic
Hermite curve through all its points at their instants (`plan`; zero velocity at the
last, so without a newer chunk the arm comes to rest where the chunk ends). Points
are meant for their instants, so inference latency is compensated rather than
accumulated.

Splicing: the controller's command at the splice time (position and velocity) is
rarely on the new plan; re-plans land up to 0.1 rad from the plan in progress. The
spliced trajectory is the plan plus that offset, fading to zero along a cubic
Hermite over a blend time long enough that the fade needs at most a share of each
joint's acceleration limit (`blend_time`). It starts exactly at the command (no
jump in position or velocity) and is the plan itself once the blend is over.
Joining the offset to the new chunk's next point instead, within the few
milliseconds to it, asked for far more than the limits allow on nearly every
re-plan.
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
        """Position and velocity (J,) at time t; before the first knot along its
        tangent, after the last knot at rest there."""
        if t <= self._times_list[0]:  # before the first knot: along its tangent
            v0 = self.velocities[0]
            return self.positions[0] + v0 * (t - self._times_list[0]), v0.copy()
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


def plan(chunk: TimedChunk) -> HermiteTrajectory:
    """The chunk's points at their instants, shape-preserving: between two points the
    curve stays between their values (no overshoot a limit would clamp), and it is
    flat where the points turn. Knot velocities (Fritsch-Carlson, as in PCHIP): the
    first segment's slope at the first knot; at interior knots zero where the
    neighbouring slopes differ in sign, else their weighted harmonic mean; zero at the
    last knot (the arm comes to rest where the chunk ends)."""
    times, positions = chunk.times_s, chunk.positions  # (K,), (K, J)
    velocities = np.zeros_like(positions)
    if len(times) > 1:
        h = np.diff(times)[:, None]  # (K-1, 1)
        slopes = np.diff(positions, axis=0) / h  # (K-1, J)
        velocities[0] = slopes[0]
        if len(times) > 2:
            d0, d1 = slopes[:-1], slopes[1:]  # either side of the interior knots
            h0, h1 = h[:-1], h[1:]
            w0, w1 = 2.0 * h1 + h0, h1 + 2.0 * h0
            same = d0 * d1 > 0.0
            with np.errstate(divide="ignore", invalid="ignore"):
                harmonic = (w0 + w1) / (w0 / d0 + w1 / d1)
            velocities[1:-1] = np.where(same, harmonic, 0.0)
    return HermiteTrajectory(times, positions, velocities)


# The fade from the command onto a new plan may use this share of each joint's
# acceleration limit (the plan itself keeps the rest), and lasts within these bounds.
BLEND_ACCELERATION_SHARE = 0.5
BLEND_SHORTEST_S = 0.1
BLEND_LONGEST_S = 1.0


def blend_time(
    offset: np.ndarray,
    offset_velocity: np.ndarray,
    amax: np.ndarray,
    share: float = BLEND_ACCELERATION_SHARE,
    shortest_s: float = BLEND_SHORTEST_S,
    longest_s: float = BLEND_LONGEST_S,
) -> float:
    """The shortest fade, within [shortest_s, longest_s], whose acceleration stays
    within `share` of `amax` on every joint.

    The cubic Hermite from (e, e') to (0, 0) over T accelerates by at most
    6 |e| / T^2 + 4 |e'| / T, which is <= a for T >= (4|e'| + sqrt(16 e'^2 + 24 a |e|)) / 2a.
    """
    a = share * np.asarray(amax, dtype=np.float64)
    e, de = np.abs(offset), np.abs(offset_velocity)
    needed = (4.0 * de + np.sqrt(16.0 * de * de + 24.0 * a * e)) / (2.0 * a)
    return float(min(max(float(needed.max(initial=0.0)), shortest_s), longest_s))


class SplicedTrajectory:
    """A plan plus the offset of the command from it at `start_s`, fading out over
    `blend_s` (cubic Hermite: the offset and its rate at the start, zero at the end).
    The fade stays inside [lower, upper] (the soft range, where the plan and the
    command are): a command moving towards a limit the plan rests on would otherwise
    swing past it while the fade turns it round."""

    def __init__(
        self,
        plan: HermiteTrajectory,
        start_s: float,
        offset: np.ndarray,
        offset_velocity: np.ndarray,
        blend_s: float,
        lower: np.ndarray,
        upper: np.ndarray,
    ) -> None:
        self.plan = plan
        self.start_s = start_s
        self.offset = offset  # (J,)
        self.offset_velocity = offset_velocity  # (J,)
        self.blend_s = blend_s
        self.lower, self.upper = lower, upper  # (J,)

    def sample(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        q, v = self.plan.sample(t)
        h = self.blend_s
        s = (t - self.start_s) / h
        if s >= 1.0:
            return q, v
        s = max(s, 0.0)
        s2, s3 = s * s, s * s * s
        h00, h10 = 2 * s3 - 3 * s2 + 1, s3 - 2 * s2 + s
        d00, d10 = 6 * s2 - 6 * s, 3 * s2 - 4 * s + 1
        e, de = self.offset, self.offset_velocity * h
        q_faded = q + h00 * e + h10 * de
        v_faded = v + (d00 * e + d10 * de) / h
        inside = np.minimum(np.maximum(q_faded, self.lower), self.upper)
        return inside, np.where(inside == q_faded, v_faded, 0.0)


def splice(
    chunk: TimedChunk,
    now_s: float,
    current_position: np.ndarray,
    current_velocity: np.ndarray,
    amax: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
) -> SplicedTrajectory:
    """The chunk's plan, joined from the current command at `now_s` by a fade whose
    acceleration stays within a share of `amax` and which stays inside [lower, upper]
    (see the module docstring)."""
    p = plan(chunk)
    q, v = p.sample(now_s)
    offset = np.asarray(current_position, dtype=np.float64) - q
    # The fade takes up the difference in velocity only as far as its acceleration
    # budget allows within the longest blend (4 |e'| / T <= share * amax). A plan that
    # starts faster than that (jumpy points: steep first segments) asks for what the
    # arm cannot do; matching it would swing the command far off, so the filter limits
    # the rest at the acceleration bound instead.
    most = BLEND_ACCELERATION_SHARE * np.asarray(amax, dtype=np.float64) * BLEND_LONGEST_S / 4.0
    offset_velocity = np.clip(np.asarray(current_velocity, dtype=np.float64) - v, -most, most)
    blend = blend_time(offset, offset_velocity, amax)
    return SplicedTrajectory(p, now_s, offset, offset_velocity, blend, lower, upper)


def minimum_jerk(s: np.ndarray | float) -> np.ndarray:
    """10s^3 - 15s^4 + 6s^5 on [0, 1]: zero velocity and acceleration at both ends."""
    s = np.clip(np.asarray(s, dtype=np.float64), 0.0, 1.0)
    return s**3 * (10.0 - 15.0 * s + 6.0 * s * s)
