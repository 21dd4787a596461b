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

from dream_vla_ros.control.errors import ConfigError
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
        return self._chain_z(q)[0]

    def height_and_gradient(self, q: np.ndarray) -> tuple[float, np.ndarray]:
        """The tool point's height and its derivative by each arm joint: joint j turns
        about the z axis of frame j + 1, so the point moves by axis x (point - origin)."""
        z, axes, origins, tool = self._chain_z(q, gradient=True)
        grad = np.array(
            [ax * (tool[1] - o[1]) - ay * (tool[0] - o[0]) for (ax, ay), o in zip(axes, origins)]
        )
        return z, grad

    def _chain_z(self, q: np.ndarray, gradient: bool = False) -> tuple:
        """The DH chain in plain floats (each tick calls it; numpy's per-call overhead
        on 4x4 matrices made it 5x slower): the tool point's height, and with
        `gradient` each joint's axis (x, y), origin (x, y) and the tool point (x, y)."""
        chain = self.chain
        # the running pose's top three rows, row-major
        r00, r01, r02, r03 = 1.0, 0.0, 0.0, 0.0
        r10, r11, r12, r13 = 0.0, 1.0, 0.0, 0.0
        r20, r21, r22, r23 = 0.0, 0.0, 1.0, 0.0
        axes, origins = [], []
        for i in range(6):
            th = float(q[i]) + float(chain.theta_offset[i])
            ct, st = math.cos(th), math.sin(th)
            al = float(chain.alpha[i])
            ca, sa = math.cos(al), math.sin(al)
            a, d = float(chain.a[i]), float(chain.d[i])
            # link: rows (ct, -st, 0, a), (st ca, ct ca, -sa, -sa d), (st sa, ct sa, ca, ca d)
            m10, m11, m12, m13 = st * ca, ct * ca, -sa, -sa * d
            m20, m21, m22, m23 = st * sa, ct * sa, ca, ca * d
            r00, r01, r02, r03 = (
                r00 * ct + r01 * m10 + r02 * m20,
                -r00 * st + r01 * m11 + r02 * m21,
                r01 * m12 + r02 * m22,
                r00 * a + r01 * m13 + r02 * m23 + r03,
            )
            r10, r11, r12, r13 = (
                r10 * ct + r11 * m10 + r12 * m20,
                -r10 * st + r11 * m11 + r12 * m21,
                r11 * m12 + r12 * m22,
                r10 * a + r11 * m13 + r12 * m23 + r13,
            )
            r20, r21, r22, r23 = (
                r20 * ct + r21 * m10 + r22 * m20,
                -r20 * st + r21 * m11 + r22 * m21,
                r21 * m12 + r22 * m22,
                r20 * a + r21 * m13 + r22 * m23 + r23,
            )
            if gradient:
                axes.append((r02, r12))
                origins.append((r03, r13))
        off = self.tool_offset_m
        z = r23 + off * r22
        if not gradient:
            return (z,)
        return z, axes, origins, (r03 + off * r02, r13 + off * r12)

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
