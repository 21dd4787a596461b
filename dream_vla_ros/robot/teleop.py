"""Teleoperation sources: where demonstration commands come from (no ROS imports).

One interface, so the teleop node and the recorder do not care which source
runs:

- `ScriptedTeleop`: smooth minimum-jerk moves between seeded random waypoints
  in a box around the start pose (tests and simulated data);
- `PiperLeaderTeleop`: a PiPER leader arm on its own CAN interface. In
  teaching mode the leader arm sends the joint and gripper *control* frames
  (0x155-0x157, 0x159) that it would send to a follower; piper_sdk exposes
  them as `GetArmJointCtrl()` / `GetArmGripperCtrl()`. The teleop node
  forwards them as chunks to the controller, which owns the follower and
  applies every safety limit.

`command(now)` returns the target for `now`; `preview(now, times)` the targets
for future times (the scripted source knows its future; a leader arm does not,
so it holds the current target).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from dream_vla_ros.control.interpolation import minimum_jerk
from dream_vla_ros.robot import piper_protocol as proto
from dream_vla_ros.robot.piper import open_sdk


class TeleopError(RuntimeError):
    """The source cannot produce commands (leader not found, no feedback)."""


class TeleopSource(Protocol):
    name: str

    def start(self, now_s: float, current: np.ndarray) -> None: ...

    def command(self, now_s: float) -> np.ndarray | None: ...

    def preview(self, now_s: float, times_s: np.ndarray) -> np.ndarray | None: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class ScriptedSettings:
    seed: int = 0
    segment_s: float = 2.0  # duration of one move
    pause_s: float = 0.3  # hold at each waypoint
    joint_span_rad: float = 0.35  # waypoints within +-span of the start pose (arm joints)
    gripper_range_m: tuple[float, float] = (0.0, 0.06)

    def __post_init__(self) -> None:
        if self.segment_s <= 0.1 or self.pause_s < 0 or self.joint_span_rad <= 0:
            raise ValueError("segment_s > 0.1, pause_s >= 0 and joint_span_rad > 0 are required")


class ScriptedTeleop:
    """Deterministic (seeded) smooth trajectories that start at the current pose.

    Peak joint speed of a minimum-jerk move is 1.875 * distance / duration, so
    with the defaults (<= 0.7 rad in 2 s) it stays under 0.66 rad/s, well inside
    the PiPER's limits; the controller enforces the limits anyway.
    """

    name = "scripted"

    def __init__(
        self,
        settings: ScriptedSettings,
        lower: np.ndarray | None = None,
        upper: np.ndarray | None = None,
    ) -> None:
        self.s = settings
        self.lower = None if lower is None else np.asarray(lower, dtype=np.float64)
        self.upper = None if upper is None else np.asarray(upper, dtype=np.float64)
        self._rng = np.random.default_rng(settings.seed)
        self._t0: float | None = None
        self._origin: np.ndarray | None = None
        self._waypoints: list[np.ndarray] = []

    def start(self, now_s: float, current: np.ndarray) -> None:
        self._t0 = now_s
        self._origin = np.asarray(current, dtype=np.float64).copy()
        self._waypoints = [self._origin.copy()]

    def _waypoint(self, k: int) -> np.ndarray:
        assert self._origin is not None
        while len(self._waypoints) <= k:
            q = self._origin.copy()
            q[:6] += self._rng.uniform(-self.s.joint_span_rad, self.s.joint_span_rad, 6)
            lo, hi = self.s.gripper_range_m
            q[6] = hi if len(self._waypoints) % 2 else lo
            if self.lower is not None and self.upper is not None:
                q = np.clip(q, self.lower, self.upper)
            self._waypoints.append(q)
        return self._waypoints[k]

    def _at(self, t: float) -> np.ndarray:
        assert self._t0 is not None
        period = self.s.segment_s + self.s.pause_s
        elapsed = max(0.0, t - self._t0)
        k = int(elapsed // period)
        phase = (elapsed - k * period) / self.s.segment_s
        a, b = self._waypoint(k), self._waypoint(k + 1)
        return a + (b - a) * float(minimum_jerk(min(phase, 1.0)))

    def command(self, now_s: float) -> np.ndarray | None:
        return None if self._t0 is None else self._at(now_s)

    def preview(self, now_s: float, times_s: np.ndarray) -> np.ndarray | None:
        if self._t0 is None:
            return None
        return np.stack([self._at(float(t)) for t in times_s])

    def close(self) -> None:
        pass


class PiperLeaderTeleop:
    """A PiPER leader arm read through the unmodified piper_sdk."""

    name = "piper_leader"

    def __init__(
        self,
        can_name: str,
        bustype: str = "socketcan",
        max_silence_s: float = 0.2,
        settle_s: float = 0.05,
    ) -> None:
        self.can_name = can_name
        self.bustype = bustype
        self.max_silence_s = max_silence_s
        # one target spans four CAN frames (0x155-0x157, 0x159): wait until the leader
        # has streamed for settle_s so a half-received first target is never forwarded
        self.settle_s = settle_s
        self._sdk = None
        self._last_stamp = 0.0
        self._last_change = 0.0
        self._streaming_since: float | None = None

    def start(self, now_s: float, current: np.ndarray) -> None:
        try:
            sdk = open_sdk(self.can_name)
            sdk.CreateCanBus(self.can_name, bustype=self.bustype, judge_flag=False)
        except Exception as exc:
            raise TeleopError(f"cannot open the leader arm's CAN '{self.can_name}': {exc}") from exc
        sdk.ConnectPort()
        self._sdk = sdk

    def command(self, now_s: float) -> np.ndarray | None:
        """The leader's latest control frames in SI units, or None while they are silent."""
        if self._sdk is None:
            return None
        whole = self._sdk.joint_ctrl  # the newest whole cycle of 0x155-0x157 (open_sdk)
        gripper = self._sdk.GetArmGripperCtrl()
        if whole is None or float(gripper.time_stamp) <= 0.0:
            return None  # the leader has not sent its control frames yet
        stamp, raw = float(whole[0]), whole[1]
        now = time.monotonic()
        if stamp != self._last_stamp:
            if self._streaming_since is None or now - self._last_change > self.max_silence_s:
                self._streaming_since = now
            self._last_stamp, self._last_change = stamp, now
        if now - self._last_change > self.max_silence_s:
            self._streaming_since = None
            return None  # leader stopped streaming: do not keep replaying an old target
        if self._streaming_since is None or now - self._streaming_since < self.settle_s:
            return None
        q = np.array([proto.millideg_to_rad(int(v)) for v in raw] + [0.0])
        q[6] = proto.micrometre_to_m(max(0, int(gripper.gripper_ctrl.grippers_angle)))
        if not np.all(np.isfinite(q)):
            return None
        return q

    def preview(self, now_s: float, times_s: np.ndarray) -> np.ndarray | None:
        q = self.command(now_s)
        return None if q is None else np.repeat(q[None, :], len(times_s), axis=0)

    def close(self) -> None:
        if self._sdk is not None:
            self._sdk.DisconnectPort()
            self._sdk = None


__all__ = [
    "PiperLeaderTeleop",
    "ScriptedSettings",
    "ScriptedTeleop",
    "TeleopError",
    "TeleopSource",
]
