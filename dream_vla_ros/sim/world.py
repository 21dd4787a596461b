"""A MuJoCo world with a PiPER, a table and coloured cubes, rendered off-screen
from a front camera and a wrist camera (no ROS imports).

The arm is built from the modified-DH table in config/piper.yaml (the same
table as control/kinematics.py): link i's body sits at Rx(alpha) Tx(a) Rz(offset)
Tz(d) in its parent and turns about its own z axis, so MuJoCo's flange pose
equals `DHChain.end_effector` for the same joints. Links are capsules between
joint origins, the gripper two fingers that slide apart by the gripper opening.
The arm's joint positions are *set* (kinematic), not simulated: the arm's
dynamics live in the CAN-level firmware simulator, whose measured joints drive
this world (controller -> piper_sdk -> virtual CAN -> firmware simulator ->
/joint_states -> this world -> camera images).

Physics (`step`): the cubes are free bodies with mass and friction, the two
fingers slide joints under force-limited position servos driven by the
firmware's gripper state (its opening, and its effort while it squeezes), and
fingers, cubes, table and bowls interact through contacts. The arm's links move
the way the measured joints say (gravity-compensated, with a large armature, and
set again before every step), so they push objects but objects do not push them.
`gripper_obstacle()` reports the opening at which an object blocks the fingers,
which the firmware simulator needs to stall its gripper there. Without `step` the
world is a kinematic scene, as the touch task uses it.

Rendering: `MUJOCO_GL=egl` (Mesa's software EGL works without a GPU or a
screen), `osmesa` as the fallback; set before mujoco is imported.

The scene's MJCF, its physics and its cameras are in this one module (longer than
most): the names the MJCF writes are the names the accessors look up.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from dream_vla_ros.control.kinematics import DHChain
from dream_vla_ros.sim.place import BOWL_RADIUS_M, BOWL_RIM_M
from dream_vla_ros.sim.schematic import look_at
from dream_vla_ros.sim.task import CUBE_SIZE, FINGER_LENGTH

RGB = {
    "red": (0.80, 0.12, 0.12),
    "green": (0.12, 0.62, 0.24),
    "blue": (0.12, 0.24, 0.80),
    "yellow": (0.85, 0.75, 0.10),
}
RGB.update(purple=(0.55, 0.20, 0.70))
FRONT_EYE = (0.62, 0.0, 0.5)
FRONT_TARGET = (0.27, 0.0, 0.0)
WRIST_OFFSET = (0.0, -0.062, 0.0)  # camera in the flange frame (beside the palm), along flange z

PHYSICS_STEP_S = 0.002
CUBE_MASS_KG = 0.05
FRICTION = 1.0
# The fingers' servo: stiffness, damping, and the force it may use to follow the
# measured opening; squeezing, each finger is driven closed with at most the
# reported effort times FINGER_N_PER_NM (the PiPER's 0-5 N*m effort on a ~0.1 m
# lever: 0-50 N; the servo gives about 6 N a side on a 4 cm cube at 1 N*m).
FINGER_KP = 400.0
FINGER_DAMPING = 4.0
FINGER_FREE_FORCE_N = 5.0
FINGER_N_PER_NM = 10.0
# The contacts of the fingers and the cubes: MuJoCo's default (0.02 s) lets a
# finger sink several millimetres into a held cube when the arm jerks (the held
# cube's inertia at 80 m/s^2 pushed the fingers 4 mm in each), which a rigid cube
# and a rigid pad do not allow. MuJoCo wants at least two physics steps here.
CONTACT_TIMECONST_S = 0.005
# The fingers' inner faces are this far apart with the gripper closed (opening 0).
FINGER_GAP_CLOSED_M = 0.01
# A bowl: a floor disc and a ring of wall segments.
BOWL_WALL_M = 0.004  # thickness (radius and height: sim/place.py)
BOWL_SEGMENTS = 24
# collision bits: objects collide with everything; the static world and the robot
# only with objects
_OBJECT, _STATIC, _ROBOT = 1, 2, 4


@dataclass(frozen=True)
class CameraOffset:
    """A camera pose offset from its nominal pose: a translation in the world frame
    [m] and rotations about the camera's own axes [rad] (roll about the viewing
    axis, pitch about its right axis, yaw about its up axis), applied yaw, pitch,
    roll."""

    dx: float = 0.0
    dy: float = 0.0
    dz: float = 0.0
    roll: float = 0.0
    pitch: float = 0.0
    yaw: float = 0.0

    @classmethod
    def parse(cls, text: str) -> CameraOffset:
        """'dx,dy,dz,roll,pitch,yaw' (metres, degrees) -> an offset; one sentence on
        anything else."""
        parts = [p for p in text.replace(" ", "").split(",") if p]
        try:
            values = [float(p) for p in parts]
        except ValueError:
            values = []
        if len(values) != 6 or not all(np.isfinite(values)):
            raise ValueError(
                f"camera offset '{text}' is not six numbers; write dx,dy,dz,roll,pitch,yaw "
                "in metres and degrees, e.g. 0.03,0,-0.02,0,5,-3"
            )
        dx, dy, dz = values[:3]
        roll, pitch, yaw = np.radians(values[3:])
        return cls(dx, dy, dz, float(roll), float(pitch), float(yaw))

    def as_list(self) -> list[float]:
        """[dx, dy, dz (m), roll, pitch, yaw (deg)] as `parse` reads them."""
        angles = np.degrees([self.roll, self.pitch, self.yaw])
        return [self.dx, self.dy, self.dz, *(round(float(a), 6) for a in angles)]

    def text(self) -> str:
        """As `parse` reads it (the sim_world parameter, the CLI option)."""
        return ",".join(f"{v:.6g}" for v in self.as_list())


# Camera-pose randomisation of the front camera: each offset component drawn
# uniformly within these bounds (m, deg) around the nominal pose.
CAMERA_JITTER = (0.04, 0.04, 0.04, 4.0, 4.0, 4.0)
# The held-out shifted poses that evaluation uses (m, deg): none is a collection
# draw; each moves the camera 3-4 cm and turns it 3-4 degrees, near the jitter's
# bounds, in different directions.
SHIFTED_POSES = (
    "0.035,-0.03,0.02,-3,3.5,3",
    "-0.03,0.035,-0.025,3.5,-3,-3.5",
    "0.03,0.03,-0.03,3,-3.5,3.5",
    "-0.035,-0.035,0.03,-3.5,3,-3",
)


def random_offset(seed: int, jitter: tuple[float, ...] = CAMERA_JITTER) -> CameraOffset:
    """A seeded draw from the camera-pose randomisation (uniform within `jitter`)."""
    rng = np.random.default_rng([seed, 20261205])
    values = [float(rng.uniform(-b, b)) for b in jitter]
    return CameraOffset(*values[:3], *(float(np.radians(v)) for v in values[3:]))


def _mujoco():
    os.environ.setdefault("MUJOCO_GL", "egl")
    if os.environ["MUJOCO_GL"] == "egl":
        os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
    import mujoco

    return mujoco


def _rot_x(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def _rot_z(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def _quat(r: np.ndarray) -> tuple[float, float, float, float]:
    """Rotation matrix -> (w, x, y, z)."""
    w = np.sqrt(max(0.0, 1 + r[0, 0] + r[1, 1] + r[2, 2])) / 2
    x = np.copysign(np.sqrt(max(0.0, 1 + r[0, 0] - r[1, 1] - r[2, 2])) / 2, r[2, 1] - r[1, 2])
    y = np.copysign(np.sqrt(max(0.0, 1 - r[0, 0] + r[1, 1] - r[2, 2])) / 2, r[0, 2] - r[2, 0])
    z = np.copysign(np.sqrt(max(0.0, 1 - r[0, 0] - r[1, 1] + r[2, 2])) / 2, r[1, 0] - r[0, 1])
    return (float(w), float(x), float(y), float(z))


def _vec(v) -> str:
    return " ".join(f"{float(x):.6g}" for x in v)


def _look_at_xyaxes(eye, target) -> str:
    """MuJoCo camera xyaxes (x right, y up; it looks along -z) for a view: the
    optical frame of `look_at` (x right, y down) with y flipped."""
    pose = look_at(np.asarray(eye, float), np.asarray(target, float))
    return _vec(np.r_[pose[:3, 0], -pose[:3, 1]])


def _bowl(colour: str) -> str:
    """A static bowl (floor disc + ring of wall segments), placed by `set_bowls`."""
    rgba = f"{_vec(RGB[colour])} 1"
    thick, height = BOWL_WALL_M, BOWL_RIM_M
    half_len = BOWL_RADIUS_M * np.tan(np.pi / BOWL_SEGMENTS) + thick / 4
    parts = [
        f'<geom type="cylinder" size="{BOWL_RADIUS_M:.4f} 0.002" pos="0 0 0.002" '
        f'rgba="{rgba}" contype="{_STATIC}" conaffinity="0" friction="{FRICTION}"/>'
    ]
    for k in range(BOWL_SEGMENTS):
        a = 2 * np.pi * k / BOWL_SEGMENTS
        pos = (BOWL_RADIUS_M * np.cos(a), BOWL_RADIUS_M * np.sin(a), height / 2)
        parts.append(
            f'<geom type="box" size="{thick / 2:.4f} {half_len:.4f} {height / 2:.4f}" '
            f'pos="{_vec(pos)}" euler="0 0 {a:.6f}" rgba="{rgba}" '
            f'contype="{_STATIC}" conaffinity="0" friction="{FRICTION}"/>'
        )
    return f'<body name="bowl_{colour}" pos="0 0 -1">{"".join(parts)}</body>'


def piper_mjcf(
    chain: DHChain,
    colours: tuple[str, ...],
    fov_deg: float = 60.0,
    bowls: tuple[str, ...] = (),
) -> str:
    """The world as MJCF: arm from the DH table, table, one cube per colour, and a
    bowl per colour in `bowls`."""
    bodies = []
    for i in range(6):
        alpha, a, off, d = chain.alpha[i], chain.a[i], chain.theta_offset[i], chain.d[i]
        pos = np.array([a, 0.0, 0.0]) + _rot_x(alpha) @ np.array([0.0, 0.0, d])
        quat = _quat(_rot_x(alpha) @ _rot_z(off))
        bodies.append((pos, quat))
    # link geometry: a capsule from each joint origin to the next one (in the body frame)
    xml = []
    depth = 0
    for i, (pos, quat) in enumerate(bodies):
        xml.append(f'<body name="link{i + 1}" pos="{_vec(pos)}" quat="{_vec(quat)}" gravcomp="1">')
        xml.append(
            f'<joint name="joint{i + 1}" type="hinge" axis="0 0 1" limited="false" armature="100"/>'
        )
        xml.append(
            f'<geom type="sphere" size="0.032" rgba="0.9 0.9 0.92 1" name="j{i + 1}" '
            f'contype="{_ROBOT}" conaffinity="0"/>'
        )
        if i + 1 < 6:
            nxt = bodies[i + 1][0]
            if np.linalg.norm(nxt) > 1e-4:
                xml.append(
                    f'<geom type="capsule" fromto="0 0 0 {_vec(nxt)}" size="0.024" '
                    f'rgba="0.25 0.25 0.3 1" contype="{_ROBOT}" conaffinity="0"/>'
                )
        depth += 1
    # the flange (link 6): a palm, two fingers and the wrist camera
    xml.append(
        '<geom type="box" size="0.035 0.045 0.012" pos="0 0 0.012" rgba="0.2 0.2 0.2 1" '
        f'contype="{_ROBOT}" conaffinity="0"/>'
    )
    for side, name in ((1, "finger_left"), (-1, "finger_right")):
        axis = _vec([0, side, 0])
        xml.append(f'<body name="{name}" pos="0 {side * 0.01:.3f} 0.024" gravcomp="1">')
        xml.append(
            f'<joint name="{name}" type="slide" axis="{axis}" limited="false" '
            f'damping="{FINGER_DAMPING}"/>'
        )
        xml.append(
            f'<geom name="{name}" type="box" '
            f'size="0.008 0.005 {FINGER_LENGTH / 2 - 0.012 / 2:.4f}" '
            f'pos="0 0 {FINGER_LENGTH / 2 - 0.012:.4f}" rgba="0.1 0.1 0.1 1" '
            f'contype="{_ROBOT}" conaffinity="0" condim="4" friction="{FRICTION} 0.02 0.0001" '
            f'solref="{CONTACT_TIMECONST_S} 1" '
            'density="1000"/>'
        )
        xml.append("</body>")
    # MuJoCo cameras look along -z: the wrist camera looks along the flange's +z
    xml.append(
        f'<camera name="wrist" pos="{_vec(WRIST_OFFSET)}" xyaxes="1 0 0 0 -1 0" fovy="{fov_deg}"/>'
    )
    xml.append(f'<site name="fingertip" pos="0 0 {FINGER_LENGTH:.4f}" size="0.005"/>')
    xml.extend(["</body>"] * depth)
    cubes = []
    for k, colour in enumerate(colours):
        rgb = RGB[colour]
        cubes.append(
            f'<body name="cube_{colour}" pos="{0.3 + 0.05 * k} 0 {CUBE_SIZE / 2}">'
            f'<freejoint name="cube_{colour}"/>'
            f'<geom name="cube_{colour}" type="box" '
            f'size="{CUBE_SIZE / 2} {CUBE_SIZE / 2} {CUBE_SIZE / 2}" '
            f'rgba="{_vec(rgb)} 1" mass="{CUBE_MASS_KG}" friction="{FRICTION} 0.02 0.0001" '
            f'solref="{CONTACT_TIMECONST_S} 1" '
            f'contype="{_OBJECT}" conaffinity="{_OBJECT | _STATIC | _ROBOT}" condim="4"/></body>'
        )
    cubes.extend(_bowl(c) for c in bowls)
    actuators = "".join(
        f'<position name="{n}" joint="{n}" kp="{FINGER_KP}" forcelimited="true" '
        f'forcerange="-{FINGER_FREE_FORCE_N} {FINGER_FREE_FORCE_N}"/>'
        for n in ("finger_left", "finger_right")
    )
    return f"""<mujoco model="piper_touch">
  <visual><global offwidth="1280" offheight="960"/><quality shadowsize="0" offsamples="0"/>
    <headlight ambient="0.45 0.45 0.45" diffuse="0.5 0.5 0.5" specular="0 0 0"/></visual>
  <asset>
    <texture name="sky" type="skybox" builtin="gradient" rgb1="0.6 0.67 0.78"
             rgb2="0.85 0.86 0.9" width="64" height="64"/>
  </asset>
  <option timestep="{PHYSICS_STEP_S}" noslip_iterations="3"/>
  <worldbody>
    <light pos="0.3 0 1.5" dir="0 0 -1" diffuse="0.6 0.6 0.6" castshadow="false"/>
    <geom name="table" type="box" pos="0.25 0 -0.01" size="0.55 0.6 0.01" rgba="0.72 0.6 0.45 1"
          contype="{_STATIC}" conaffinity="0" friction="{FRICTION}"/>
    <geom type="cylinder" size="0.06 0.03" pos="0 0 0.03" rgba="0.3 0.3 0.35 1"
          contype="{_STATIC}" conaffinity="0"/>
    <camera name="front" pos="{_vec(FRONT_EYE)}" xyaxes="{_look_at_xyaxes(FRONT_EYE, FRONT_TARGET)}"
            fovy="{fov_deg}"/>
    {"".join(xml)}
    {"".join(cubes)}
  </worldbody>
  <actuator>{actuators}</actuator>
</mujoco>"""


def _rot_y(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


@dataclass
class PiperWorld:
    """MuJoCo scene + off-screen renderer for the front and wrist cameras; `bowls`
    adds a bowl per colour (the place task), `step` runs the physics."""

    width: int = 640
    height: int = 480
    colours: tuple[str, ...] = ("red", "green", "blue")
    chain: DHChain = field(default_factory=DHChain.load)
    bowls: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        mujoco = _mujoco()
        self._mj = mujoco
        self.model = mujoco.MjModel.from_xml_string(
            piper_mjcf(self.chain, self.colours, bowls=self.bowls)
        )
        self.data = mujoco.MjData(self.model)
        self._renderer = None
        self._joint_adr = np.array(
            [self.model.jnt_qposadr[self.model.joint(f"joint{i + 1}").id] for i in range(6)]
        )
        self._joint_dof = np.array(
            [self.model.jnt_dofadr[self.model.joint(f"joint{i + 1}").id] for i in range(6)]
        )
        fingers = ("finger_left", "finger_right")
        self._finger_adr = [self.model.jnt_qposadr[self.model.joint(n).id] for n in fingers]
        self._finger_act = [self.model.actuator(n).id for n in fingers]
        self._finger_geoms = tuple(self.model.geom(n).id for n in fingers)
        self._cube_ids = {c: self.model.body(f"cube_{c}").id for c in self.colours}
        self._cube_adr = {
            c: self.model.jnt_qposadr[self.model.joint(f"cube_{c}").id] for c in self.colours
        }
        self._cube_dof = {
            c: self.model.jnt_dofadr[self.model.joint(f"cube_{c}").id] for c in self.colours
        }
        self._cube_geoms = {self.model.geom(f"cube_{c}").id: c for c in self.colours}
        self._bowl_ids = {c: self.model.body(f"bowl_{c}").id for c in self.bowls}
        self._tip = self.model.site("fingertip").id
        self._flange = self.model.body("link6").id
        self._front = self.model.camera("front").id
        self._front_nominal = (
            self.model.cam_pos[self._front].copy(),
            self.model.cam_quat[self._front].copy(),
        )
        self.front_offset = CameraOffset()
        self.time_s = 0.0  # simulated time of the physics
        self.squeezing = False  # the fingers closed under the gripper's effort (last step)

    @property
    def renderer(self):
        if self._renderer is None:
            self._renderer = self._mj.Renderer(self.model, self.height, self.width)
        return self._renderer

    # -- scene ------------------------------------------------------------------------
    def reset_physics(self) -> None:
        """Forget every velocity, contact and warm start (the bowls, the camera offset
        and the objects' places stay): what follows replays bit for bit."""
        self._mj.mj_resetData(self.model, self.data)
        self.time_s = 0.0
        self.squeezing = False

    def set_cubes(
        self, positions: dict[str, np.ndarray], yaws: dict[str, float] | None = None
    ) -> None:
        """Cube centres (x, y) on the table or (x, y, z) [m], upright and at rest,
        turned by `yaws` [rad] about the vertical (default 0: faces along the axes)."""
        for colour, p in positions.items():
            p = np.asarray(p, dtype=np.float64)
            z = p[2] if p.shape[0] > 2 else CUBE_SIZE / 2
            half = 0.5 * float((yaws or {}).get(colour, 0.0))
            adr, dof = self._cube_adr[colour], self._cube_dof[colour]
            self.data.qpos[adr : adr + 7] = (p[0], p[1], z, np.cos(half), 0.0, 0.0, np.sin(half))
            self.data.qvel[dof : dof + 6] = 0.0
        self._mj.mj_kinematics(self.model, self.data)

    def cube(self, colour: str) -> np.ndarray:
        adr = self._cube_adr[colour]
        return np.array(self.data.qpos[adr : adr + 3])

    def cube_yaw(self, colour: str, tilt_deg: float = 10.0) -> float | None:
        """The turn about the vertical [rad, -pi/4..pi/4] of a cube resting on a face
        (a face normal within `tilt_deg` of vertical); None for a tilted cube. A cube
        looks the same turned by a quarter, so any face may be the one below."""
        adr = self._cube_adr[colour]
        w, x, y, z = self.data.qpos[adr + 3 : adr + 7]
        rot = np.empty(9)
        self._mj.mju_quat2Mat(rot, np.array([w, x, y, z], dtype=np.float64))
        axes = rot.reshape(3, 3)  # columns: the cube's axes in the world
        up = int(np.argmax(np.abs(axes[2])))
        if abs(axes[2, up]) < np.cos(np.radians(tilt_deg)):
            return None
        side = axes[:, (up + 1) % 3]  # a horizontal face normal
        yaw = float(np.arctan2(side[1], side[0]))
        return (yaw + np.pi / 4) % (np.pi / 2) - np.pi / 4

    def cube_speed(self, colour: str) -> float:
        dof = self._cube_dof[colour]
        return float(np.linalg.norm(self.data.qvel[dof : dof + 3]))

    def set_bowls(self, positions: dict[str, np.ndarray]) -> None:
        """Bowl centres on the table (x, y) [m]."""
        for colour, p in positions.items():
            self.model.body_pos[self._bowl_ids[colour]] = (float(p[0]), float(p[1]), 0.0)
        self._mj.mj_kinematics(self.model, self.data)

    def bowl(self, colour: str) -> np.ndarray:
        return np.array(self.model.body_pos[self._bowl_ids[colour]])

    def set_front_offset(self, offset: CameraOffset) -> None:
        """Move the front camera by `offset` from its nominal pose."""
        pos, quat = self._front_nominal
        nominal = np.empty(9)
        self._mj.mju_quat2Mat(nominal, quat)
        rot = (
            nominal.reshape(3, 3) @ _rot_y(offset.yaw) @ _rot_x(offset.pitch) @ _rot_z(offset.roll)
        )
        new_quat = np.empty(4)
        self._mj.mju_mat2Quat(new_quat, rot.reshape(-1))
        self.model.cam_pos[self._front] = pos + np.array([offset.dx, offset.dy, offset.dz])
        self.model.cam_quat[self._front] = new_quat
        self.front_offset = offset
        self._mj.mj_kinematics(self.model, self.data)
        self._mj.mj_camlight(self.model, self.data)

    # -- the arm ----------------------------------------------------------------------
    def set_joints(self, q: np.ndarray) -> None:
        """6 joint angles [rad] and the gripper opening [m] (optional 7th value),
        set without physics (the fingers too)."""
        q = np.asarray(q, dtype=np.float64)
        self.data.qpos[self._joint_adr] = q[:6]
        opening = float(q[6]) if q.shape[0] > 6 else 0.0
        for adr in self._finger_adr:
            self.data.qpos[adr] = max(0.0, opening) / 2
        self._mj.mj_kinematics(self.model, self.data)
        self._mj.mj_camlight(self.model, self.data)

    def opening(self) -> float:
        """The fingers' opening as the gripper measures it [m]."""
        return float(sum(self.data.qpos[a] for a in self._finger_adr))

    def step(self, q: np.ndarray, gripper_effort_nm: float, duration_s: float) -> None:
        """Run the physics for `duration_s`: the arm's joints move linearly from where
        they are to `q[:6]`; the fingers follow the gripper opening `q[6]` (at most
        FINGER_FREE_FORCE_N), or, while the gripper reports an effort (it squeezes
        an object), close with that effort's force."""
        q = np.asarray(q, dtype=np.float64)
        n = max(1, int(round(duration_s / PHYSICS_STEP_S)))
        start = self.data.qpos[self._joint_adr].copy()
        velocity = (q[:6] - start) / (n * PHYSICS_STEP_S)
        squeeze = gripper_effort_nm > 0.0
        self.squeezing = squeeze
        force = gripper_effort_nm * FINGER_N_PER_NM if squeeze else FINGER_FREE_FORCE_N
        for act in self._finger_act:
            self.model.actuator_forcerange[act] = (-force, force)
            self.data.ctrl[act] = 0.0 if squeeze else max(0.0, float(q[6])) / 2
        for k in range(n):
            self.data.qpos[self._joint_adr] = start + velocity * (k * PHYSICS_STEP_S)
            self.data.qvel[self._joint_dof] = velocity
            self._mj.mj_step(self.model, self.data)
        self.data.qpos[self._joint_adr] = q[:6]
        self.data.qvel[self._joint_dof] = 0.0 if n == 0 else velocity
        self._mj.mj_kinematics(self.model, self.data)
        self._mj.mj_camlight(self.model, self.data)
        self.time_s += n * PHYSICS_STEP_S

    def contacts(self) -> dict[str, set[str]]:
        """Cube colour -> what touches it: 'finger_left', 'finger_right', 'table',
        another cube's colour, 'bowl' or 'robot' (any other arm geom)."""
        out: dict[str, set[str]] = {c: set() for c in self.colours}
        fingers = dict(zip(self._finger_geoms, ("finger_left", "finger_right")))
        table = self.model.geom("table").id
        for i in range(self.data.ncon):
            con = self.data.contact[i]
            for a, b in ((con.geom1, con.geom2), (con.geom2, con.geom1)):
                colour = self._cube_geoms.get(int(a))
                if colour is None:
                    continue
                b = int(b)
                if b in fingers:
                    out[colour].add(fingers[b])
                elif b in self._cube_geoms:
                    out[colour].add(self._cube_geoms[b])
                elif b == table:
                    out[colour].add("table")
                elif self.model.geom_bodyid[b] in self._bowl_ids.values():
                    out[colour].add("bowl")
                else:
                    out[colour].add("robot")
        return out

    def held(self) -> str:
        """The cube both fingers touch ('' = none)."""
        for colour, touching in self.contacts().items():
            if {"finger_left", "finger_right"} <= touching:
                return colour
        return ""

    def gripper_obstacle(self) -> float:
        """The opening [m] at which something blocks the fingers, 0 when nothing does.
        While the gripper squeezes, the fingers close under its force and stop only
        where something blocks them: their opening is the obstacle (on nothing they
        close and the gripper reaches its target), however a held cube shifts or a
        finger's contact flickers. Otherwise: the opening while both fingers touch
        one cube."""
        if self.squeezing or self.held():
            return max(0.0, self.opening())
        return 0.0

    # -- cameras ----------------------------------------------------------------------
    def flange_pose(self) -> np.ndarray:
        pose = np.eye(4)
        pose[:3, :3] = self.data.xmat[self._flange].reshape(3, 3)
        pose[:3, 3] = self.data.xpos[self._flange]
        return pose

    def fingertip(self) -> np.ndarray:
        return np.array(self.data.site_xpos[self._tip])

    def render(self, camera: str) -> np.ndarray:
        """(height, width, 3) uint8 RGB from 'front' or 'wrist' as the world is now."""
        r = self.renderer
        r.update_scene(self.data, camera)
        return r.render().copy()

    def render_front(self, q: np.ndarray) -> np.ndarray:
        self.set_joints(q)
        return self.render("front")

    def render_wrist(self, q: np.ndarray) -> np.ndarray:
        self.set_joints(q)
        return self.render("wrist")

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
