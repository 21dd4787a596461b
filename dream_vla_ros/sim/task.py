"""The "touch the {colour} cube" task: random layouts, success, a scripted expert.

A layout is three cubes (red, green, blue) at seeded random places on the table
in front of the arm (x 0.22-0.36 m, y -0.16-0.16 m, centres at least 9 cm
apart) and the colour named in the instruction. **Success**: the fingertip (the
tip of the closed fingers, 6 cm along the flange z axis) comes within
`SUCCESS_DISTANCE_M` (3 cm) of the named cube's top face centre, before it comes
that close to another cube's.

The expert solves it from joint space: inverse kinematics (damped least
squares on the DH forward kinematics) for a pose 6 cm above the cube with the
fingers pointing down, then for the touch pose 1 cm above the top face
(`TOUCH_HEIGHT_M`); it moves home -> above -> touch with minimum-jerk profiles and
holds. It implements the teleop interface (robot/teleop.py), so the recorder
records it like a person on a leader arm.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dream_vla_ros.control.interpolation import minimum_jerk
from dream_vla_ros.control.kinematics import DHChain

COLOURS = ("red", "green", "blue")
CUBE_SIZE = 0.04
FINGER_LENGTH = 0.06
SUCCESS_DISTANCE_M = 0.03
HOME = np.array([0.0, 1.54, -1.0608, 0.0, 1.1788, 0.0, 0.05])
X_RANGE = (0.22, 0.36)
Y_RANGE = (-0.16, 0.16)
MIN_SEPARATION_M = 0.09
APPROACH_S = 1.6  # the expert's move from home to 6 cm above the cube
DESCEND_S = 1.0  # ... and down to the touch pose
# a recorded demonstration: the expert's move, then at most TOUCH_WAIT_S more for the
# fingertip to reach the cube (the arm lags its command), then a TOUCH_HOLD_S hold
TOUCH_WAIT_S = 1.5
TOUCH_HOLD_S = 0.6
# the touch pose: the fingertip this far above the cube's top face (on it, 0, gave
# no gain: docs/sim.md "What was tried")
TOUCH_HEIGHT_M = 0.01
# random start poses (collect's random starts): the fingertip over the cube area,
# 6-16 cm above the cubes' tops (never within touching distance of one)
START_X = (0.20, 0.38)
START_Y = (-0.18, 0.18)
START_Z = (0.10, 0.20)


@dataclass(frozen=True)
class Layout:
    seed: int
    cubes: dict[str, np.ndarray]  # colour -> centre (x, y, z) [m]
    target: str  # the colour to touch

    @property
    def instruction(self) -> str:
        return f"touch the {self.target} cube"

    def top(self, colour: str) -> np.ndarray:
        return self.cubes[colour] + np.array([0.0, 0.0, CUBE_SIZE / 2])


def check_target(target: str) -> str:
    """`target` if it is empty (the seed's own) or one of COLOURS, else ValueError."""
    if target and target not in COLOURS:
        raise ValueError(f"unknown target colour '{target}'; choose one of {list(COLOURS)}")
    return target


def sample_layout(seed: int, target: str = "") -> Layout:
    """The seed's cube positions; the cube to touch is `target` when given (one of
    COLOURS), else drawn from the seed."""
    check_target(target)
    rng = np.random.default_rng([seed, 20261122])
    cubes: dict[str, np.ndarray] = {}
    for colour in COLOURS:
        for _ in range(1000):
            p = np.array([rng.uniform(*X_RANGE), rng.uniform(*Y_RANGE), CUBE_SIZE / 2])
            if all(np.linalg.norm(p[:2] - o[:2]) >= MIN_SEPARATION_M for o in cubes.values()):
                cubes[colour] = p
                break
        else:  # pragma: no cover - the region fits three cubes easily
            raise RuntimeError(f"cannot place the {colour} cube for seed {seed}")
    drawn = COLOURS[int(rng.integers(len(COLOURS)))]
    return Layout(seed, cubes, target or drawn)


def touch_naming(seed: int, j: int) -> Layout:
    """A layout's j-th naming for the touch task: its own cube first (j = 0), then the
    next colours in turn."""
    own = COLOURS.index(sample_layout(seed).target)
    return sample_layout(seed, COLOURS[(own + j) % len(COLOURS)])


def fingertip(chain: DHChain, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fingertip position and the fingers' pointing direction (flange z) in the base frame."""
    pose = chain.end_effector(q)
    return pose[:3, 3] + FINGER_LENGTH * pose[:3, 2], pose[:3, 2]


@dataclass
class Outcome:
    success: bool
    touched: str  # the first cube the fingertip reached ('' = none)
    distance_m: float  # closest approach to the target cube's top


class SuccessMonitor:
    """Follows the fingertip along an episode and decides success."""

    def __init__(self, layout: Layout, chain: DHChain | None = None) -> None:
        self.layout = layout
        self.chain = chain or DHChain.load()
        self.touched = ""
        self.closest = float("inf")

    def update(self, q: np.ndarray) -> None:
        tip, _ = fingertip(self.chain, q)
        for colour in COLOURS:
            d = float(np.linalg.norm(tip - self.layout.top(colour)))
            if colour == self.layout.target:
                self.closest = min(self.closest, d)
            if not self.touched and d < SUCCESS_DISTANCE_M:
                self.touched = colour

    @property
    def outcome(self) -> Outcome:
        return Outcome(self.touched == self.layout.target, self.touched, self.closest)


def solve_ik(
    chain: DHChain,
    target: np.ndarray,
    q0: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
    iterations: int = 200,
    finger_axis: np.ndarray | None = None,
) -> np.ndarray:
    """Joints (6) that put the fingertip at `target` with the fingers pointing down
    and, when `finger_axis` is given, closing along it (the flange's y axis).
    Damped least squares on a numerical Jacobian; raises if it does not converge."""
    q = np.clip(np.asarray(q0, dtype=np.float64)[:6].copy(), lower, upper)
    down = np.array([0.0, 0.0, -1.0])

    def residual(x: np.ndarray) -> np.ndarray:
        tip, axis = fingertip(chain, x)
        r = np.r_[tip - target, 0.3 * (axis - down)]
        if finger_axis is None:
            return r
        return np.r_[r, 0.3 * (chain.end_effector(x)[:3, 1] - finger_axis)]

    r = residual(q)
    for _ in range(iterations):
        if np.linalg.norm(r[:3]) < 1e-4 and np.linalg.norm(r[3:]) < 3e-3:
            return q
        jac = np.empty((len(r), 6))
        for j in range(6):
            dq = np.zeros(6)
            dq[j] = 1e-6
            jac[:, j] = (residual(q + dq) - r) / 1e-6
        step = np.linalg.solve(jac.T @ jac + 1e-4 * np.eye(6), -jac.T @ r)
        q = np.clip(q + np.clip(step, -0.2, 0.2), lower, upper)
        r = residual(q)
    if np.linalg.norm(r[:3]) > 2e-3 or np.linalg.norm(r[6:]) > 0.05:
        across = "" if finger_axis is None else " with the fingers across the cube"
        raise RuntimeError(
            f"IK did not reach {np.round(target, 3)}{across} (error {np.linalg.norm(r[:3]):.4f} m)"
        )
    return q


def rest_pose(rest: np.ndarray | None) -> np.ndarray:
    """An expert's pose with no layout: HOME, or `rest` (7 finite values)."""
    pose = HOME.copy() if rest is None else np.asarray(rest, dtype=np.float64)
    if pose.shape != (7,) or not np.all(np.isfinite(pose)):
        raise ValueError(f"rest pose must be 7 finite values, got {pose.tolist()}")
    return pose


def start_pose(
    seed: int, lower: np.ndarray, upper: np.ndarray, chain: DHChain | None = None
) -> np.ndarray:
    """A seeded pose (7: joints and HOME's gripper) to start a demonstration from:
    the fingertip at a random point over the cube area (START_X, START_Y, START_Z:
    6-16 cm above the cubes' tops), fingers pointing down, within `lower`..`upper`.
    Demonstrations from such poses show the way to the named cube from where a
    policy's own errors take the arm, not only from home (docs/sim.md)."""
    chain = chain or DHChain.load()
    lower, upper = np.asarray(lower)[:6], np.asarray(upper)[:6]
    rng = np.random.default_rng([seed, 20261123])
    error: RuntimeError | None = None
    for _ in range(20):
        tip = np.array([rng.uniform(*START_X), rng.uniform(*START_Y), rng.uniform(*START_Z)])
        try:
            return np.r_[solve_ik(chain, tip, HOME, lower, upper), HOME[6]]
        except RuntimeError as exc:  # a point the limits do not reach: draw again
            error = exc
    raise RuntimeError(f"no reachable start pose for seed {seed}: {error}")


class TouchExpert:
    """Scripted expert for one layout, as a teleop source (robot/teleop.py). With no
    layout it only returns the arm to `rest` (default HOME; a `start_pose` before a
    demonstration from a random start) and holds there."""

    name = "touch_expert"

    def __init__(
        self,
        layout: Layout | None,
        lower: np.ndarray,
        upper: np.ndarray,
        approach_s: float = APPROACH_S,
        descend_s: float = DESCEND_S,
        chain: DHChain | None = None,
        rest: np.ndarray | None = None,
    ) -> None:
        self.layout = layout
        self.chain = chain or DHChain.load()
        self.lower, self.upper = np.asarray(lower)[:6], np.asarray(upper)[:6]
        self.approach_s, self.descend_s = approach_s, descend_s
        if layout is None:
            rest = rest_pose(rest)
            self.above = self.touch = np.clip(rest[:6], self.lower, self.upper)
        else:
            top = layout.top(layout.target)
            self.above = solve_ik(self.chain, top + [0, 0, 0.06], HOME, self.lower, self.upper)
            self.touch = solve_ik(
                self.chain, top + [0, 0, TOUCH_HEIGHT_M], self.above, self.lower, self.upper
            )
        self._start: tuple[float, np.ndarray] | None = None

    @property
    def duration_s(self) -> float:
        return self.approach_s + self.descend_s

    def start(self, now_s: float, current: np.ndarray) -> None:
        self._start = (now_s, np.asarray(current, dtype=np.float64).copy())

    def _at(self, t: float) -> np.ndarray:
        assert self._start is not None
        t0, q0 = self._start
        s = t - t0
        gripper = HOME[6] if self.layout is None else 0.0  # closed: the tip is one point
        if s <= self.approach_s:
            a = float(minimum_jerk(s / self.approach_s))
            q = q0[:6] + a * (self.above - q0[:6])
        else:
            a = float(minimum_jerk((s - self.approach_s) / self.descend_s))
            q = self.above + a * (self.touch - self.above)
        return np.r_[q, gripper]

    def command(self, now_s: float) -> np.ndarray | None:
        return None if self._start is None else self._at(now_s)

    def preview(self, now_s: float, times_s: np.ndarray) -> np.ndarray | None:
        if self._start is None:
            return None
        return np.stack([self._at(float(t)) for t in times_s])

    def close(self) -> None:
        self._start = None
