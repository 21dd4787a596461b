"""The per-tick safety rules (docs/architecture.md §4.3), in one place.

Every command that reaches the arm passes `SafetyFilter.step`, which applies,
in this order:

1. soft position limits (the target is clamped into the soft range);
2. velocity and acceleration limits relative to the last command, over the
   time that really elapsed since it (the caller passes `dt`; the nominal
   period when omitted). The velocity bound also shrinks near a soft limit
   and near the target so the joint can always brake in time at the allowed
   deceleration: a limited command never overshoots a limit or oscillates
   around a target;
3. the workspace floor (config `workspace:`, control/workspace.py): the tool
   point's downward speed is bounded so that `braking_m_s2` stops it on the floor,
   by the smallest change of the joint velocities, within the limits of 2;
4. maximum deviation from the measured position: a violation is a *fault*
   (the caller stops the arm), never a clamp.

Why the real elapsed time: with a fixed per-tick step, a loop that runs at
75 Hz instead of 200 Hz (a loaded host) lets the command advance only 3/8 of
the allowed speed, and the arm falls further and further behind the
time-indexed target. The caller caps `dt` (ChunkController: 10 control
periods), so after a longer stall the arm still moves less far than the
elapsed time would allow, which is the safe direction. The braking bound at
the soft limits holds whatever the next ticks' lengths turn out to be (see
`limit_speed`), and it lets a joint reach a limit exactly: the closed gripper
sits on its lower limit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dream_vla_ros.control.config import SafetyConfig


class TrackingFault(Exception):
    """The commanded and measured positions disagree by more than the configured bound."""


@dataclass(frozen=True)
class FilteredCommand:
    position: np.ndarray  # (J,) what is sent
    velocity: np.ndarray  # (J,) (position - previous position) / dt
    limited: bool  # True when any rule changed the requested target
    # (J,) why, per joint: the target lay outside the soft range (clamped), or the
    # velocity, acceleration or braking bounds kept the command from reaching it (slowed)
    clamped: np.ndarray | None = None
    slowed: np.ndarray | None = None


def _clip(x: np.ndarray, lo: np.ndarray | float, hi: np.ndarray | float) -> np.ndarray:
    # np.clip's dispatch costs ~5 us per call on 7-vectors; the ufuncs ~1 us
    return np.minimum(np.maximum(x, lo), hi)


def braking_speed(distance: np.ndarray, amax: np.ndarray, period: float) -> np.ndarray:
    """Largest per-tick speed from which a joint surely stops within `distance`.

    With speed decrements of a*T per tick the distance covered while stopping
    from v (this tick included) is at most (v + a*T)^2 / (2a), so
    v <= sqrt(2 a d) - a*T keeps the stop inside `distance` exactly, in
    discrete time, and is reachable from the previous tick's bound.
    """
    d = np.maximum(distance, 0.0)
    return np.maximum(np.sqrt(2.0 * amax * d) - amax * period, 0.0)


def limit_speed(distance: np.ndarray, amax: np.ndarray, period: float) -> np.ndarray:
    """Largest speed for a step of `period` towards a limit `distance` away from
    which the joint can still stop at the limit, whatever the next ticks' lengths.

    Braking by a*T_i on each later tick of length T_i (the acceleration bound) covers
    sum T_i (v - a (T_1 + ... + T_i)) <= v^2 / (2a): a right Riemann sum of the
    falling line v - a s, below its integral for any T_i. So the step may go as fast as
    v T + v^2 / (2a) <= d allows: v = sqrt(a^2 T^2 + 2 a d) - a T. From there the next
    tick's bound is reachable at any length T' (v_next >= v - a T'), and near the
    limit the step covers nearly all of d (the gap shrinks quadratically): a joint
    sent to its limit gets there, not a*T^2/2 short of it.
    """
    d = np.maximum(distance, 0.0)
    aT = amax * period
    return np.maximum(np.sqrt(aT * aT + 2.0 * amax * d) - aT, 0.0)


class SafetyFilter:
    """Limits a stream of position targets; keeps the last command as its state."""

    def __init__(self, cfg: SafetyConfig, period_s: float, max_dt_s: float | None = None) -> None:
        if not period_s > 0:
            raise ValueError(f"control period must be > 0, got {period_s}")
        self.period = period_s
        # the longest step a command may take (a longer stall moves it no further)
        self.max_dt = period_s if max_dt_s is None else max(max_dt_s, period_s)
        self.lower = cfg.soft_lower
        self.upper = cfg.soft_upper
        self.vmax = cfg.vmax
        self.amax = cfg.amax
        self.tracking_mask = cfg.arm_joint_mask
        self.max_tracking_error = cfg.max_tracking_error_rad
        self.joint_names = cfg.joint_names
        self.workspace = cfg.workspace
        self.position = np.zeros(len(cfg.joint_names))
        self.velocity = np.zeros(len(cfg.joint_names))

    def reset(self, measured_position: np.ndarray) -> None:
        """Start from rest at the measured position.

        Not clamped: an arm parked outside the soft range (the PiPER's home pose
        has joint2 = joint3 = 0, on the hard limits) is brought inside under the
        velocity and acceleration limits instead of by a one-tick jump.
        """
        self.position = np.asarray(measured_position, dtype=np.float64).copy()
        self.velocity = np.zeros_like(self.position)

    def _floor_braking(self, q: np.ndarray, v: np.ndarray, period: float) -> np.ndarray:
        """`v` with the tool point's downward speed at most what `braking_m_s2` stops
        on the floor from the height of `q` (`limit_speed`, as at the joint limits;
        nothing downward below the floor): the smallest change, along the height's
        joint gradient."""
        ws = self.workspace
        assert ws is not None
        z, grad = ws.height_and_gradient(q)
        down = float(grad @ v[:6])
        allowed = -float(limit_speed(np.array(z - ws.floor_z_m), np.array(ws.braking_m_s2), period))
        g2 = float(grad @ grad)
        if down >= allowed or g2 < 1e-12:
            return v
        out = v.copy()
        out[:6] += grad * ((allowed - down) / g2)
        return out

    def step(
        self,
        target: np.ndarray,
        target_velocity: np.ndarray | None = None,
        measured: np.ndarray | None = None,
        dt: float | None = None,
    ) -> FilteredCommand:
        """Limit `target` (J,) against the last command; raise TrackingFault on deviation.

        `target_velocity` (J,) is the target's own rate of change (zero for a
        fixed target); the filter follows a moving target exactly while it stays
        inside the limits and approaches a distant one on a braking curve.
        `dt` is the time since the last command [s], clamped to (0, max_dt].
        """
        T = self.period if dt is None else min(max(dt, 1e-4), self.max_dt)
        q, v_prev = self.position, self.velocity
        # 1. soft position limits (a clamped target does not move)
        goal = _clip(target, self.lower, self.upper)
        v_goal = np.zeros_like(q) if target_velocity is None else np.asarray(target_velocity)
        v_goal = np.where(goal == target, v_goal, 0.0)
        # 2. velocity: follow the goal's velocity plus a correction that can be
        #    braked to zero before the error closes; bounded by vmax and by the
        #    braking distance to the soft limits; then the acceleration limit.
        error = goal - q - v_goal * T
        # (an error below a*T^2 closes in one step that the next tick can brake from)
        reachable = np.maximum(braking_speed(np.abs(error), self.amax, T), self.amax * T)
        correction = np.minimum(np.abs(error) / T, reachable)
        v_want = v_goal + np.sign(error) * correction
        v_hi = np.minimum(self.vmax, limit_speed(self.upper - q, self.amax, T))
        v_lo = np.maximum(-self.vmax, -limit_speed(q - self.lower, self.amax, T))
        v = _clip(v_want, v_lo, v_hi)
        dv = self.amax * T
        v = _clip(v, v_prev - dv, v_prev + dv)
        # 3. the tool point's descent towards the workspace floor
        if self.workspace is not None:
            v = _clip(_clip(self._floor_braking(q, v, T), v_lo, v_hi), v_prev - dv, v_prev + dv)
        # inside the soft range stay inside; outside it, only move towards it
        new_q = _clip(q + v * T, np.minimum(self.lower, q), np.maximum(self.upper, q))
        v = (new_q - q) / T
        # 4. deviation from the measured position is a fault
        if measured is not None:
            deviation = np.abs(new_q - measured) * self.tracking_mask
            j = int(np.argmax(deviation))
            if deviation[j] > self.max_tracking_error:
                raise TrackingFault(
                    f"{self.joint_names[j]} is {deviation[j]:.3f} rad from its command "
                    f"(limit {self.max_tracking_error} rad)"
                )
        off = np.abs(new_q - target) > 1e-9
        clamped = off & (goal != target)
        slowed = off & (np.abs(new_q - goal) > 1e-9)
        self.position, self.velocity = new_q, v
        return FilteredCommand(new_q, v, bool(off.any()), clamped, slowed)
