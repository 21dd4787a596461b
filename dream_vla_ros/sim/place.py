"""The "put the {colour} cube in the {colour} bowl" task: layouts, stages and
success, a scripted expert (no ROS imports, no MuJoCo).

A layout is three cubes (red, green, blue) and two bowls (yellow, purple) at
seeded random places on the table (cubes at x 0.20-0.38 m, y -0.20-0.20 m, bowl
centres at x 0.20-0.36 m, y -0.18-0.18 m; bowls at least 17 cm apart, a cube at
least 11 cm from a bowl's centre and 8 cm from another cube), upright, each
turned to show a face to the arm's base (yaw = the bearing from the base), with a
named cube and a named bowl. The faces towards the base keep the fingers' closing
axis where the arm's natural wrist angle puts it: with the cubes along the base
axes the expert turned the wrist by up to 0.7 rad, differently per layout, and the
policy's wrist plans swung between re-plans until the controller faulted.

**Success**: the named cube rests inside the named bowl (its centre within
`INSIDE_RADIUS_M` of the bowl's axis and below the rim), released (no finger
touches it), still (< 2 cm/s), with no other cube in that bowl. The stages on the
way say where a failure happens: *reached* (the fingertip within 3 cm of the
named cube's centre), *grasped* (both fingers on it), *lifted* (its bottom 2 cm
above the table while grasped), *placed* (success).

The expert (`PlaceExpert`, a teleop source) plans in joint space with the touch
task's inverse kinematics, fingers pointing down and closing across the cube's
faces: open -> above the cube (or, with a `Miss`, first beside it, then over it)
-> down to the grasp pose -> close (the gripper stalls on the cube and squeezes)
-> lift -> carry over the bowl -> lower -> open -> up. Each move is a minimum-jerk
profile whose joints peak at 0.7 rad/s and whose gripper peaks at 0.08 m/s, inside
the controller's limits.

The layouts, the success check and the expert are in this one module (longer than
most): they share the task's geometry (cube, bowl and fingertip heights).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dream_vla_ros.control.interpolation import minimum_jerk
from dream_vla_ros.control.kinematics import DHChain
from dream_vla_ros.sim.task import COLOURS, CUBE_SIZE, HOME, rest_pose, solve_ik

BOWL_COLOURS = ("yellow", "purple")
BOWL_RADIUS_M = 0.065  # the bowls sim/world.py draws: radius and wall height
BOWL_RIM_M = 0.03
INSIDE_RADIUS_M = BOWL_RADIUS_M - CUBE_SIZE / 2 - 0.002
X_RANGE = (0.20, 0.38)
Y_RANGE = (-0.20, 0.20)
# bowl centres: the carry height above the far corners is beyond the arm's reach
BOWL_X_RANGE = (0.20, 0.36)
BOWL_Y_RANGE = (-0.18, 0.18)
BOWL_SEPARATION_M = 0.17
CUBE_BOWL_SEPARATION_M = 0.11
CUBE_SEPARATION_M = 0.08
REACH_M = 0.03
LIFT_M = 0.02
STILL_M_S = 0.02
SETTLE_S = 0.5  # the cube placed this long ends an evaluation's rollout early

# The expert's poses: fingertip heights above the table [m] and gripper openings
GRASP_TIP_Z = 0.012  # the closed fingers' tips 1.2 cm above the table, astride the cube
ABOVE_TIP_Z = 0.10
CARRY_TIP_Z = 0.12
RELEASE_TIP_Z = 0.065  # the held cube's bottom ~2.5 cm above the bowl's rim
OPEN_M = 0.065  # the fingers' inner faces 7.5 cm apart around a 4 cm cube
CLOSED_M = 0.0  # commanded closed: the gripper stalls on the cube and squeezes
PEAK_JOINT_RAD_S = 0.7
PEAK_GRIPPER_M_S = 0.08
# A first approach that misses (Miss): heights where the open fingertips clear a 4 cm
# cube by 3 cm or more, and the largest sideways miss
MISS_HEIGHTS_M = (0.07, ABOVE_TIP_Z)
MISS_MAX_M = 0.06


@dataclass(frozen=True)
class PlaceLayout:
    seed: int
    cubes: dict[str, np.ndarray]  # colour -> centre (x, y, z) [m]
    bowls: dict[str, np.ndarray]  # colour -> centre on the table (x, y, 0) [m]
    cube: str  # the cube to move
    bowl: str  # ... and where to put it
    yaws: dict[str, float] = field(default_factory=dict)  # colour -> cube yaw [rad]

    @property
    def instruction(self) -> str:
        return f"put the {self.cube} cube in the {self.bowl} bowl"

    def as_dict(self) -> dict:
        return {
            "seed": self.seed,
            "instruction": self.instruction,
            "cube": self.cube,
            "bowl": self.bowl,
            "cubes": {c: p.tolist() for c, p in self.cubes.items()},
            "bowls": {c: p.tolist() for c, p in self.bowls.items()},
            "yaws": self.yaws,
        }


@dataclass(frozen=True)
class Miss:
    """A first approach that misses the cube: the fingertip (dx, dy) [m] beside the
    point above it, at height z [m] above the table. The expert then moves over the
    cube at that height and descends from there, so that a demonstration shows
    what to do when the fingers are beside the cube, where a policy's errors take
    them (the images show the cube off the fingers' axis)."""

    dx: float
    dy: float
    z: float

    def __post_init__(self) -> None:
        if (
            not np.isfinite([self.dx, self.dy, self.z]).all()
            or np.hypot(self.dx, self.dy) > MISS_MAX_M + 1e-9
        ):
            raise ValueError(
                f"a miss must be finite and at most {MISS_MAX_M} m sideways, "
                f"got dx {self.dx}, dy {self.dy}"
            )
        lo, hi = MISS_HEIGHTS_M
        if not lo - 1e-9 <= self.z <= hi + 1e-9:
            raise ValueError(
                f"a miss's height must be {lo}-{hi} m (the open fingers clear the "
                f"cube), got {self.z}"
            )

    @classmethod
    def draw(cls, seed: int, radius_m: float) -> Miss:
        """A seeded miss: a uniform direction, a distance uniform in 0.25-1 x
        `radius_m`, a height uniform in MISS_HEIGHTS_M."""
        rng = np.random.default_rng([seed, 7919])
        angle = rng.uniform(0.0, 2.0 * np.pi)
        r = radius_m * rng.uniform(0.25, 1.0)
        return cls(
            round(float(r * np.cos(angle)), 4),
            round(float(r * np.sin(angle)), 4),
            round(float(rng.uniform(*MISS_HEIGHTS_M)), 4),
        )

    @classmethod
    def parse(cls, text: str) -> Miss | None:
        """'DX,DY,Z' in metres; '' is no miss."""
        if not text.strip():
            return None
        try:
            dx, dy, z = (float(v) for v in text.split(","))
        except ValueError:
            raise ValueError(
                f"a miss is 'DX,DY,Z' in metres (e.g. '0.03,-0.01,0.08'), got '{text}'"
            ) from None
        return cls(dx, dy, z)

    def text(self) -> str:
        return f"{self.dx},{self.dy},{self.z}"


def check_choice(value: str, choices: tuple[str, ...], what: str) -> str:
    if value and value not in choices:
        raise ValueError(f"unknown {what} colour '{value}'; choose one of {list(choices)}")
    return value


def _place(rng, existing, separations, xs=X_RANGE, ys=Y_RANGE, tries=2000) -> np.ndarray:
    for _ in range(tries):
        p = np.array([rng.uniform(*xs), rng.uniform(*ys)])
        if all(np.linalg.norm(p - o[:2]) >= sep for o, sep in zip(existing, separations)):
            return p
    raise RuntimeError("cannot place an object on the table")


def sample_place_layout(seed: int, cube: str = "", bowl: str = "") -> PlaceLayout:
    """The seed's cubes and bowls; the cube and bowl to name are `cube` / `bowl`
    when given, else drawn from the seed."""
    check_choice(cube, COLOURS, "cube")
    check_choice(bowl, BOWL_COLOURS, "bowl")
    rng = np.random.default_rng([seed, 20261204])
    bowls: dict[str, np.ndarray] = {}
    for colour in BOWL_COLOURS:
        seps = [BOWL_SEPARATION_M] * len(bowls)
        p = _place(rng, list(bowls.values()), seps, BOWL_X_RANGE, BOWL_Y_RANGE)
        bowls[colour] = np.r_[p, 0.0]
    cubes: dict[str, np.ndarray] = {}
    for colour in COLOURS:
        others = list(bowls.values()) + list(cubes.values())
        seps = [CUBE_BOWL_SEPARATION_M] * len(bowls) + [CUBE_SEPARATION_M] * len(cubes)
        cubes[colour] = np.r_[_place(rng, others, seps), CUBE_SIZE / 2]
    drawn_cube = COLOURS[int(rng.integers(len(COLOURS)))]
    drawn_bowl = BOWL_COLOURS[int(rng.integers(len(BOWL_COLOURS)))]
    yaws = {c: float(np.arctan2(p[1], p[0])) for c, p in cubes.items()}
    return PlaceLayout(seed, cubes, bowls, cube or drawn_cube, bowl or drawn_bowl, yaws)


# -- stages and success -------------------------------------------------------------------
def place_naming(seed: int, j: int) -> PlaceLayout:
    """Layout `seed` with its j-th naming: j 0 the seed's own cube and bowl, j 1-5
    the other five (cube and bowl both change with each j)."""
    own = sample_place_layout(seed)
    cube = COLOURS[(COLOURS.index(own.cube) + j) % len(COLOURS)]
    bowl = BOWL_COLOURS[(BOWL_COLOURS.index(own.bowl) + j) % len(BOWL_COLOURS)]
    return sample_place_layout(seed, cube, bowl)


def placed_by_naming(rollouts: list[dict]) -> dict[str, dict[str, list[int]]]:
    """Placed and run counts by the named cube's colour and by the named bowl's,
    {"cube": {colour: [placed, rollouts]}, "bowl": {...}}, from rollouts with an
    "instruction" (a layout's) and a "success"; an instruction of another form counts
    in neither."""
    counts: dict[str, dict[str, list[int]]] = {
        "cube": {c: [0, 0] for c in COLOURS},
        "bowl": {b: [0, 0] for b in BOWL_COLOURS},
    }
    namings = {
        PlaceLayout(0, {}, {}, c, b).instruction: (c, b) for c in COLOURS for b in BOWL_COLOURS
    }
    for r in rollouts:
        named = namings.get(str(r.get("instruction", "")))
        if named is None:
            continue
        for kind, colour in zip(("cube", "bowl"), named):
            counts[kind][colour][0] += bool(r.get("success"))
            counts[kind][colour][1] += 1
    return counts


def naming_line(counts: dict[str, dict[str, list[int]]]) -> str:
    """`placed_by_naming` in one line: "by named cube: red 8 / 13, ...; by named bowl:
    ..." (colours never named left out)."""
    parts = []
    for kind in ("cube", "bowl"):
        named = [f"{c} {n} / {t}" for c, (n, t) in counts[kind].items() if t]
        parts.append(f"by named {kind}: " + ", ".join(named or ["none"]))
    return "; ".join(parts)


@dataclass(frozen=True)
class Snapshot:
    """What the success check needs of the world at one instant."""

    time_s: float
    cubes: dict[str, np.ndarray]  # colour -> centre
    speeds: dict[str, float]  # colour -> linear speed [m/s]
    fingers: dict[str, int]  # colour -> how many fingers touch it (0-2)
    tip: np.ndarray  # the fingertip

    @classmethod
    def of(cls, world) -> Snapshot:
        """From a sim.world.PiperWorld."""
        contacts = world.contacts()
        return cls(
            time_s=world.time_s,
            cubes={c: world.cube(c) for c in world.colours},
            speeds={c: world.cube_speed(c) for c in world.colours},
            fingers={c: len(contacts[c] & {"finger_left", "finger_right"}) for c in world.colours},
            tip=world.fingertip(),
        )

    def as_dict(self) -> dict:
        return {
            "time_s": self.time_s,
            "cubes": {c: p.tolist() for c, p in self.cubes.items()},
            "speeds": self.speeds,
            "fingers": self.fingers,
            "tip": self.tip.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> Snapshot:
        return cls(
            time_s=float(d["time_s"]),
            cubes={c: np.asarray(p, dtype=np.float64) for c, p in d["cubes"].items()},
            speeds={c: float(v) for c, v in d["speeds"].items()},
            fingers={c: int(v) for c, v in d["fingers"].items()},
            tip=np.asarray(d["tip"], dtype=np.float64),
        )


def in_bowl(cube: np.ndarray, bowl: np.ndarray) -> bool:
    """A cube centre inside a bowl: within INSIDE_RADIUS_M of its axis, below its rim."""
    horizontal = float(np.linalg.norm(np.asarray(cube)[:2] - np.asarray(bowl)[:2]))
    return horizontal <= INSIDE_RADIUS_M and float(cube[2]) < BOWL_RIM_M


STAGES = ("reached", "grasped", "lifted", "placed")


@dataclass
class PlaceOutcome:
    success: bool
    stage: str  # the furthest stage reached ('' = none)
    detail: str  # one sentence: what the final state is


@dataclass
class PlaceMonitor:
    """Follows snapshots of an episode: the stages reached and whether the named
    cube is placed now."""

    layout: PlaceLayout
    stages: dict[str, float] = field(default_factory=dict)  # stage -> first time
    last: Snapshot | None = None
    closest_m: float = float("inf")  # the fingertip's closest approach to the named cube
    closest_offset_m: np.ndarray | None = None  # fingertip - cube centre (x, y, z) then

    def placed(self, snap: Snapshot) -> bool:
        lay = self.layout
        bowl = lay.bowls[lay.bowl]
        return (
            in_bowl(snap.cubes[lay.cube], bowl)
            and snap.fingers[lay.cube] == 0
            and snap.speeds[lay.cube] < STILL_M_S
            and not any(in_bowl(p, bowl) for c, p in snap.cubes.items() if c != lay.cube)
        )

    def update(self, snap: Snapshot) -> None:
        lay = self.layout
        cube = snap.cubes[lay.cube]
        distance = float(np.linalg.norm(snap.tip - cube))
        if distance < self.closest_m:
            self.closest_m = distance
            self.closest_offset_m = np.asarray(snap.tip - cube, dtype=np.float64)
        marks = {
            "reached": distance < REACH_M,
            "grasped": snap.fingers[lay.cube] == 2,
            "lifted": snap.fingers[lay.cube] == 2 and cube[2] - CUBE_SIZE / 2 > LIFT_M,
            "placed": self.placed(snap),
        }
        for stage in STAGES:
            if marks[stage] and stage not in self.stages:
                self.stages[stage] = snap.time_s
        self.last = snap

    @property
    def outcome(self) -> PlaceOutcome:
        lay = self.layout
        stage = max(self.stages, key=STAGES.index, default="")
        if self.last is None:
            return PlaceOutcome(False, stage, "nothing observed")
        snap = self.last
        success = self.placed(snap)
        cube = snap.cubes[lay.cube]
        where = [c for c, b in lay.bowls.items() if in_bowl(cube, b)]
        intruders = [
            c for c, p in snap.cubes.items() if c != lay.cube and in_bowl(p, lay.bowls[lay.bowl])
        ]
        if success:
            detail = f"the {lay.cube} cube rests in the {lay.bowl} bowl"
        elif snap.fingers[lay.cube]:
            detail = f"the {lay.cube} cube is still in the fingers"
        elif intruders:
            detail = f"the {', '.join(intruders)} cube is in the {lay.bowl} bowl too"
        elif where:
            detail = f"the {lay.cube} cube is in the {where[0]} bowl, not the {lay.bowl} one"
        else:
            detail = f"the {lay.cube} cube is on the table, in no bowl"
        return PlaceOutcome(success, stage, detail)


def placed_for(monitor: PlaceMonitor, seconds: float) -> bool:
    """The named cube has rested in the named bowl for `seconds` (snapshot time)."""
    last = monitor.last
    since = monitor.stages.get("placed")
    return (
        last is not None
        and since is not None
        and monitor.placed(last)
        and last.time_s - since >= seconds
    )


# -- the expert ---------------------------------------------------------------------------
def _face_axis(chain: DHChain, q: np.ndarray, yaw: float = 0.0) -> np.ndarray:
    """Of the cube's face normals (yaw about z), the one nearest the flange's y axis
    at `q`: the fingers close across two faces with the least wrist turn."""
    y_axis = chain.end_effector(q)[:3, 1]
    angles = yaw + np.arange(4) * np.pi / 2
    normals = [np.array([np.cos(a), np.sin(a), 0.0]) for a in angles]
    return max(normals, key=lambda n: float(n @ y_axis))


def solve_grasp_ik(
    chain: DHChain,
    tip: np.ndarray,
    finger_axis: np.ndarray | None,
    q0: np.ndarray,
    lower: np.ndarray,
    upper: np.ndarray,
) -> np.ndarray:
    """Joints (6) with the fingertip at `tip`, the fingers pointing down and, when
    `finger_axis` is given, closing along it: the touch task's IK, then the same
    with the closing axis added, from there."""
    q = solve_ik(chain, tip, q0, lower, upper)
    if finger_axis is None:
        return q
    return solve_ik(chain, tip, q, lower, upper, iterations=300, finger_axis=finger_axis)


def _duration(a: np.ndarray, b: np.ndarray, minimum_s: float) -> float:
    joints = 1.875 * float(np.abs(b[:6] - a[:6]).max()) / PEAK_JOINT_RAD_S
    gripper = 1.875 * abs(float(b[6] - a[6])) / PEAK_GRIPPER_M_S
    return max(minimum_s, joints, gripper)


class PlaceExpert:
    """Scripted expert for one layout, as a teleop source (robot/teleop.py). It
    plans from the pose it is started at; with no layout it returns the arm to
    `rest` (default HOME) and holds there."""

    name = "place_expert"

    def __init__(
        self,
        layout: PlaceLayout | None,
        lower: np.ndarray,
        upper: np.ndarray,
        chain: DHChain | None = None,
        rest: np.ndarray | None = None,
        miss: Miss | None = None,
    ) -> None:
        self.layout = layout
        self.miss = miss
        self.chain = chain or DHChain.load()
        self.lower, self.upper = np.asarray(lower)[:6], np.asarray(upper)[:6]
        self.rest = rest_pose(rest)
        self.poses: list[tuple[str, np.ndarray, float]] = []  # (name, pose 7, min duration)
        if layout is not None:
            self.poses = self._plan(layout)
        self._segments: list[tuple[str, float, float, np.ndarray, np.ndarray]] = []

    def _plan(self, lay: PlaceLayout) -> list[tuple[str, np.ndarray, float]]:
        ik, c, b = self.chain, lay.cubes[lay.cube], lay.bowls[lay.bowl]
        lo, hi = self.lower, self.upper
        natural = solve_ik(ik, np.r_[c[:2], ABOVE_TIP_Z], HOME, lo, hi)
        axis = _face_axis(ik, natural, lay.yaws.get(lay.cube, 0.0))
        above = solve_grasp_ik(ik, np.r_[c[:2], ABOVE_TIP_Z], axis, natural, lo, hi)
        approach = [("approach", np.r_[above, OPEN_M], 1.4)]
        if self.miss is not None:
            m = self.miss
            beside = np.r_[c[:2] + (m.dx, m.dy), m.z]
            wrong = solve_grasp_ik(ik, beside, axis, natural, lo, hi)
            above = solve_grasp_ik(ik, np.r_[c[:2], m.z], axis, wrong, lo, hi)
            approach = [
                ("approach", np.r_[wrong, OPEN_M], 1.4),
                ("correct", np.r_[above, OPEN_M], 0.6),
            ]
        grasp = solve_grasp_ik(ik, np.r_[c[:2], GRASP_TIP_Z], axis, above, lo, hi)
        lift = solve_grasp_ik(ik, np.r_[c[:2], CARRY_TIP_Z], axis, grasp, lo, hi)
        carry = solve_ik(ik, np.r_[b[:2], CARRY_TIP_Z], lift, lo, hi)
        lower = solve_ik(ik, np.r_[b[:2], RELEASE_TIP_Z], carry, lo, hi)
        return [
            *approach,
            ("descend", np.r_[grasp, OPEN_M], 1.0),
            ("close", np.r_[grasp, CLOSED_M], 0.6),
            ("hold", np.r_[grasp, CLOSED_M], 0.3),
            ("lift", np.r_[lift, CLOSED_M], 0.8),
            ("carry", np.r_[carry, CLOSED_M], 1.0),
            ("lower", np.r_[lower, CLOSED_M], 0.6),
            ("release", np.r_[lower, OPEN_M], 0.6),
            ("retreat", np.r_[carry, OPEN_M], 0.8),
        ]

    @property
    def duration_s(self) -> float:
        return sum(t1 - t0 for _, t0, t1, _, _ in self._segments)

    def start(self, now_s: float, current: np.ndarray) -> None:
        q = np.asarray(current, dtype=np.float64).copy()
        q[:6] = np.clip(q[:6], self.lower, self.upper)
        poses = self.poses or [("rest", self.rest, 1.0)]
        self._segments = []
        t = now_s
        for name, pose, minimum in poses:
            d = _duration(q, pose, minimum)
            self._segments.append((name, t, t + d, q, pose))
            q, t = pose, t + d

    def phase(self, now_s: float) -> str:
        """The segment the plan is in at `now_s` ('' before the start, 'done' after)."""
        if not self._segments or now_s < self._segments[0][1]:
            return ""
        for name, _, t1, _, _ in self._segments:
            if now_s <= t1:
                return name
        return "done"

    def segment_start(self, name: str) -> float:
        """When the started plan's segment `name` begins [s]."""
        for segment, t0, _, _, _ in self._segments:
            if segment == name:
                return t0
        raise KeyError(f"the plan has no segment '{name}'")

    def _at(self, t: float) -> np.ndarray:
        for _, t0, t1, a, b in self._segments:
            if t <= t1:
                s = float(minimum_jerk(max(0.0, t - t0) / (t1 - t0)))
                return a + s * (b - a)
        return self._segments[-1][4].copy()

    def command(self, now_s: float) -> np.ndarray | None:
        return self._at(now_s) if self._segments else None

    def preview(self, now_s: float, times_s: np.ndarray) -> np.ndarray | None:
        if not self._segments:
            return None
        return np.stack([self._at(float(t)) for t in times_s])

    def close(self) -> None:
        self._segments = []


def expert_with_miss(
    layout: PlaceLayout, lower: np.ndarray, upper: np.ndarray, miss: Miss | None
) -> tuple[PlaceExpert, Miss | None]:
    """The expert for `layout` with `miss`, or without one when the point beside the
    cube is out of the arm's reach (its inverse kinematics fails there; about 1 in
    600 draws at the largest radius, beside a far corner). Returns the expert and
    the miss it demonstrates."""
    if miss is not None:
        try:
            return PlaceExpert(layout, lower, upper, miss=miss), miss
        except RuntimeError:
            pass
    return PlaceExpert(layout, lower, upper), None
