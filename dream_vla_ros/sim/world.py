"""A MuJoCo world with a PiPER, a table and coloured cubes, rendered off-screen
from a front camera and a wrist camera (no ROS imports).

The arm is built from the modified-DH table in config/piper.yaml (the same
table as control/kinematics.py): link i's body sits at Rx(alpha) Tx(a) Rz(offset)
Tz(d) in its parent and turns about its own z axis, so MuJoCo's flange pose
equals `DHChain.end_effector` for the same joints. Links are capsules between
joint origins, the gripper two fingers that slide apart by the gripper opening.
Joint positions are *set* (kinematic), not simulated: the arm's dynamics live
in the CAN-level firmware simulator, whose measured joints drive this world
(controller -> piper_sdk -> virtual CAN -> firmware simulator -> /joint_states
-> this world -> camera images).

Rendering: `MUJOCO_GL=egl` (Mesa's software EGL works without a GPU or a
screen), `osmesa` as the fallback; set before mujoco is imported.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from dream_vla_ros.control.kinematics import DHChain
from dream_vla_ros.sim.schematic import look_at
from dream_vla_ros.sim.task import CUBE_SIZE, FINGER_LENGTH

RGB = {
    "red": (0.80, 0.12, 0.12),
    "green": (0.12, 0.62, 0.24),
    "blue": (0.12, 0.24, 0.80),
    "yellow": (0.85, 0.75, 0.10),
}
FRONT_EYE = (0.62, 0.0, 0.5)
FRONT_TARGET = (0.27, 0.0, 0.0)
WRIST_OFFSET = (0.0, -0.062, 0.0)  # camera in the flange frame (beside the palm), along flange z


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


def piper_mjcf(chain: DHChain, colours: tuple[str, ...], fov_deg: float = 60.0) -> str:
    """The world as MJCF: arm from the DH table, table, one cube per colour."""
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
        xml.append(f'<body name="link{i + 1}" pos="{_vec(pos)}" quat="{_vec(quat)}">')
        xml.append(f'<joint name="joint{i + 1}" type="hinge" axis="0 0 1" limited="false"/>')
        xml.append(f'<geom type="sphere" size="0.032" rgba="0.9 0.9 0.92 1" name="j{i + 1}"/>')
        if i + 1 < 6:
            nxt = bodies[i + 1][0]
            if np.linalg.norm(nxt) > 1e-4:
                xml.append(
                    f'<geom type="capsule" fromto="0 0 0 {_vec(nxt)}" size="0.024" '
                    f'rgba="0.25 0.25 0.3 1"/>'
                )
        depth += 1
    # the flange (link 6): a palm, two fingers and the wrist camera
    xml.append('<geom type="box" size="0.035 0.045 0.012" pos="0 0 0.012" rgba="0.2 0.2 0.2 1"/>')
    for side, name in ((1, "finger_left"), (-1, "finger_right")):
        axis = _vec([0, side, 0])
        xml.append(f'<body name="{name}" pos="0 {side * 0.01:.3f} 0.024">')
        xml.append(f'<joint name="{name}" type="slide" axis="{axis}" limited="false"/>')
        xml.append(
            f'<geom type="box" size="0.008 0.005 {FINGER_LENGTH / 2 - 0.012 / 2:.4f}" '
            f'pos="0 0 {FINGER_LENGTH / 2 - 0.012:.4f}" rgba="0.1 0.1 0.1 1"/>'
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
            f'<geom type="box" size="{CUBE_SIZE / 2} {CUBE_SIZE / 2} {CUBE_SIZE / 2}" '
            f'rgba="{_vec(rgb)} 1"/></body>'
        )
    return f"""<mujoco model="piper_touch">
  <visual><global offwidth="1280" offheight="960"/><quality shadowsize="0" offsamples="0"/>
    <headlight ambient="0.45 0.45 0.45" diffuse="0.5 0.5 0.5" specular="0 0 0"/></visual>
  <asset>
    <texture name="sky" type="skybox" builtin="gradient" rgb1="0.6 0.67 0.78"
             rgb2="0.85 0.86 0.9" width="64" height="64"/>
  </asset>
  <worldbody>
    <light pos="0.3 0 1.5" dir="0 0 -1" diffuse="0.6 0.6 0.6" castshadow="false"/>
    <geom name="table" type="box" pos="0.25 0 -0.01" size="0.55 0.6 0.01" rgba="0.72 0.6 0.45 1"/>
    <geom type="cylinder" size="0.06 0.03" pos="0 0 0.03" rgba="0.3 0.3 0.35 1"/>
    <camera name="front" pos="{_vec(FRONT_EYE)}" xyaxes="{_look_at_xyaxes(FRONT_EYE, FRONT_TARGET)}"
            fovy="{fov_deg}"/>
    {"".join(xml)}
    {"".join(cubes)}
  </worldbody>
</mujoco>"""


@dataclass
class PiperWorld:
    """MuJoCo scene + off-screen renderer for the front and wrist cameras."""

    width: int = 640
    height: int = 480
    colours: tuple[str, ...] = ("red", "green", "blue")
    chain: DHChain = field(default_factory=DHChain.load)

    def __post_init__(self) -> None:
        mujoco = _mujoco()
        self._mj = mujoco
        self.model = mujoco.MjModel.from_xml_string(piper_mjcf(self.chain, self.colours))
        self.data = mujoco.MjData(self.model)
        self._renderer = None
        self._joint_adr = [
            self.model.jnt_qposadr[self.model.joint(f"joint{i + 1}").id] for i in range(6)
        ]
        self._finger_adr = [
            self.model.jnt_qposadr[self.model.joint(n).id] for n in ("finger_left", "finger_right")
        ]
        self._cube_ids = {c: self.model.body(f"cube_{c}").id for c in self.colours}
        self._tip = self.model.site("fingertip").id
        self._flange = self.model.body("link6").id

    @property
    def renderer(self):
        if self._renderer is None:
            self._renderer = self._mj.Renderer(self.model, self.height, self.width)
        return self._renderer

    def set_cubes(self, positions: dict[str, np.ndarray]) -> None:
        """Cube centres on the table (x, y) or (x, y, z) [m]."""
        for colour, p in positions.items():
            p = np.asarray(p, dtype=np.float64)
            z = p[2] if p.shape[0] > 2 else CUBE_SIZE / 2
            self.model.body_pos[self._cube_ids[colour]] = (p[0], p[1], z)

    def cube(self, colour: str) -> np.ndarray:
        return np.array(self.model.body_pos[self._cube_ids[colour]])

    def set_joints(self, q: np.ndarray) -> None:
        """6 joint angles [rad] and the gripper opening [m] (optional 7th value)."""
        q = np.asarray(q, dtype=np.float64)
        for adr, value in zip(self._joint_adr, q[:6]):
            self.data.qpos[adr] = value
        opening = float(q[6]) if q.shape[0] > 6 else 0.0
        for adr in self._finger_adr:
            self.data.qpos[adr] = max(0.0, opening) / 2
        self._mj.mj_kinematics(self.model, self.data)
        self._mj.mj_camlight(self.model, self.data)

    def flange_pose(self) -> np.ndarray:
        pose = np.eye(4)
        pose[:3, :3] = self.data.xmat[self._flange].reshape(3, 3)
        pose[:3, 3] = self.data.xpos[self._flange]
        return pose

    def fingertip(self) -> np.ndarray:
        return np.array(self.data.site_xpos[self._tip])

    def render(self, camera: str) -> np.ndarray:
        """(height, width, 3) uint8 RGB from 'front' or 'wrist' at the current joints."""
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
