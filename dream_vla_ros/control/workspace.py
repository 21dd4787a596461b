"""The workspace floor: a plane of the base frame the tool point may not go below.

Joint limits alone let a policy drive the fingertips into the table the arm stands
on (a 1 cm error in how the joints combine is enough). The floor is a Cartesian
rule on the tool point (the flange's origin plus `tool_offset_m` along its z axis),
applied in three places (docs/controller.md, "The workspace floor"):

1. every accepted chunk (ChunkController.submit): a target that puts the tool point
   below `floor_z_m` is lifted onto it by the smallest joint change (Gauss-Newton on
   the height alone); a target that no such change lifts rejects the chunk;
2. every tick (ChunkController.tick): a sampled target below the floor (the plan
   between targets, the splice's fading offset) is lifted onto it, and the safety
   filter bounds the tool point's downward speed so that `braking_m_s2` stops it on
   the floor (SafetyFilter, rule 3);
3. every command: one that moves the tool point down to more than `fault_margin_m`
   below the floor is a fault, the last line. A command that does not move down
   never faults: an arm that starts below the floor may hold there and rise.

No ROS imports; the height and its joint gradient cost one forward-kinematics pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dream_vla_ros.control.config import ConfigError
from dream_vla_ros.control.kinematics import DHChain

# Gauss-Newton iterations that lift one target onto the floor (the height is close
# to linear over a lift of centimetres: two or three land within a micrometre)
LIFT_ITERATIONS = 6
# a lifted target counts as on the floor this close to it [m]
LIFT_TOLERANCE_M = 1e-4


@dataclass(frozen=True)
class Workspace:
    chain: DHChain
    tool_offset_m: float  # tool point: this far along the flange's z axis [m]
    floor_z_m: float  # lowest height of the tool point in the base frame [m]
    fault_margin_m: float  # a command moving down this far below the floor faults [m]
    # the deceleration the safety filter allows the tool point towards the floor
    # [m/s^2]: its downward speed at a height d above it is at most what stops it there
    braking_m_s2: float = 0.5

    def __post_init__(self) -> None:
        for key in ("tool_offset_m", "floor_z_m", "fault_margin_m", "braking_m_s2"):
            value = getattr(self, key)
            if isinstance(value, bool) or not (
                isinstance(value, int | float) and math.isfinite(value)
            ):
                raise ConfigError(f"workspace.{key} must be a finite number, got {value!r}")
        if self.tool_offset_m < 0:
            raise ConfigError(
                f"workspace.tool_offset_m must be >= 0 (metres along the flange's z axis), "
                f"got {self.tool_offset_m}"
            )
        for key in ("fault_margin_m", "braking_m_s2"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"workspace.{key} must be > 0, got {getattr(self, key)}")

    def tool_height(self, q: np.ndarray) -> float:
        """Height of the tool point [m] in the base frame for joints q[:6]."""
        pose = self.chain.end_effector(q)
        return float(pose[2, 3] + self.tool_offset_m * pose[2, 2])

    def height_and_gradient(self, q: np.ndarray) -> tuple[float, np.ndarray]:
        """The tool point's height and its derivative by each arm joint: joint j turns
        about the z axis of frame j + 1, so the point moves by axis x (point - origin)."""
        frames = self.chain.frames(q)
        tool = frames[-1, :3, 3] + self.tool_offset_m * frames[-1, :3, 2]
        axes, origins = frames[1:, :3, 2], frames[1:, :3, 3]
        lever = tool - origins
        # z component of axis x lever, per joint
        grad = axes[:, 0] * lever[:, 1] - axes[:, 1] * lever[:, 0]
        return float(tool[2]), grad

    def lift(self, q: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> np.ndarray | None:
        """`q` (>= 6 values) with the arm joints moved the least (in the joint-space
        norm) that puts the tool point on the floor, inside [lower, upper]; `q` itself
        when it is above the floor; None when no such change gets it there."""
        z = self.tool_height(q)
        if z >= self.floor_z_m:
            return q
        out = np.array(q, dtype=np.float64)
        for _ in range(LIFT_ITERATIONS):
            z, grad = self.height_and_gradient(out)
            gap = self.floor_z_m - z  # an overshoot (gap < 0) is taken back
            if abs(gap) < 1e-6:
                break
            norm2 = float(grad @ grad)
            if norm2 < 1e-12:
                return None
            out[:6] = np.clip(out[:6] + grad * (gap / norm2), lower[:6], upper[:6])
        z = self.tool_height(out)
        if z < self.floor_z_m - LIFT_TOLERANCE_M:
            return None
        return out

    def fault(self, previous: np.ndarray, command: np.ndarray) -> str:
        """Why `command` may not follow `previous` ('' when it may): it moves the
        tool point down to more than the margin below the floor."""
        z = self.tool_height(command)
        if z >= self.floor_z_m - self.fault_margin_m:
            return ""
        if z >= self.tool_height(previous) - 1e-9:
            return ""
        return (
            f"the tool point would go {self.floor_z_m - z:.3f} m below the workspace floor "
            f"(z {self.floor_z_m} m, fault margin {self.fault_margin_m} m)"
        )


def load_workspace(section: object, chain: DHChain) -> Workspace:
    """The `workspace:` section of the limits file (the caller adds the file's name
    to an error)."""
    keys = ("tool_offset_m", "floor_z_m", "fault_margin_m", "braking_m_s2")
    if not isinstance(section, dict) or set(section) != set(keys):
        raise ConfigError(f"'workspace' must be a mapping with exactly the keys {list(keys)}")
    return Workspace(chain, *(section[k] for k in keys))
