"""A schematic camera renderer in numpy: the PiPER (forward kinematics), a
checkered table and coloured cubes, seen by a fixed front camera and by a wrist
camera on the flange. No ROS imports, no GPU, no OpenGL.

It is the camera source of the light `sim` graph and of `collect` (the MuJoCo
world, sim/world.py, feeds `sim_world` and `collect_world`): the images change
with the arm's joints and with the object positions, which is what the policy's
input path needs. It is not photo-realistic and does not model occlusion beyond
painter's ordering.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

from dream_vla_ros.control.kinematics import DHChain

SKY_TOP = np.array([150, 170, 200], dtype=np.float32)
SKY_BOTTOM = np.array([215, 220, 230], dtype=np.float32)
TABLE_A = np.array([190, 160, 120], dtype=np.float32)
TABLE_B = np.array([170, 140, 100], dtype=np.float32)
LINK_COLOUR = (60, 60, 70)
JOINT_COLOUR = (230, 230, 235)
FINGER_COLOUR = (40, 40, 40)
BACKGROUND_SCALE = 4
NEAR_CLIP_M = 0.06  # arm parts closer than this to a camera are not drawn


@dataclass(frozen=True)
class SceneObject:
    name: str
    position: tuple[float, float, float]  # centre in the base frame [m]
    colour: tuple[int, int, int]
    size: float = 0.04  # edge [m]


DEFAULT_OBJECTS = (
    SceneObject("red cube", (0.30, -0.12, 0.02), (200, 30, 30)),
    SceneObject("green cube", (0.34, 0.06, 0.02), (30, 160, 60)),
    SceneObject("blue cube", (0.24, 0.16, 0.02), (30, 60, 200)),
)


@dataclass(frozen=True)
class CameraModel:
    width: int = 640
    height: int = 480
    fov_y_deg: float = 60.0

    @property
    def focal(self) -> float:
        return 0.5 * self.height / np.tan(np.radians(self.fov_y_deg) / 2)


def look_at(eye: np.ndarray, target: np.ndarray, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """Camera-to-base pose with the optical convention (x right, y down, z forward)."""
    eye, target = np.asarray(eye, float), np.asarray(target, float)
    z = target - eye
    z /= np.linalg.norm(z)
    x = np.cross(z, np.asarray(up, float))
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    pose = np.eye(4)
    pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3] = x, y, z, eye
    return pose


@dataclass
class SchematicScene:
    chain: DHChain = field(default_factory=DHChain.load)
    objects: tuple[SceneObject, ...] = DEFAULT_OBJECTS
    camera: CameraModel = field(default_factory=CameraModel)
    front_pose: np.ndarray = field(
        default_factory=lambda: look_at(np.array([0.85, 0.0, 0.55]), np.array([0.2, 0.0, 0.1]))
    )
    # the wrist camera sits 4 cm behind the flange, looking along the flange's z axis
    wrist_offset: np.ndarray = field(default_factory=lambda: np.array([0.0, -0.05, -0.04]))

    def __post_init__(self) -> None:
        # The background (sky and table) is ray-cast at a quarter of the resolution
        # and scaled up (nearest); the fixed front view's background is cached.
        cam = self.camera
        hs, ws = max(1, cam.height // BACKGROUND_SCALE), max(1, cam.width // BACKGROUND_SCALE)
        u = ((np.arange(ws, dtype=np.float32) + 0.5) * cam.width / ws - cam.width / 2) / cam.focal
        v = ((np.arange(hs, dtype=np.float32) + 0.5) * cam.height / hs - cam.height / 2) / cam.focal
        uu, vv = np.meshgrid(u, v)
        self._rays = np.stack([uu, vv, np.ones_like(uu)], axis=-1)  # camera frame, z = 1
        self._rows = np.arange(cam.height) * hs // cam.height
        self._cols = np.arange(cam.width) * ws // cam.width
        self._cache: dict[bytes, np.ndarray] = {}

    # -- poses ------------------------------------------------------------------------
    def wrist_pose(self, q: np.ndarray) -> np.ndarray:
        flange = self.chain.end_effector(q)
        pose = flange.copy()
        pose[:3, 3] = flange[:3, :3] @ self.wrist_offset + flange[:3, 3]
        return pose

    # -- rendering --------------------------------------------------------------------
    def render(self, q: np.ndarray, camera_pose: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 RGB of the scene with the arm at q (6 joints + gripper)."""
        image = self._background(camera_pose)
        disks = self._arm_disks(np.asarray(q, dtype=np.float64)) + self._object_disks()
        world_to_cam = np.linalg.inv(camera_pose)
        centres = np.array([d[0] for d in disks])
        cam_pts = centres @ world_to_cam[:3, :3].T + world_to_cam[:3, 3]
        order = np.argsort(-cam_pts[:, 2])  # far to near
        f = self.camera.focal
        cx, cy = self.camera.width / 2, self.camera.height / 2
        for i in order:
            x, y, z = cam_pts[i]
            if z < NEAR_CLIP_M:
                continue
            radius_px = max(1.0, f * disks[i][1] / z)
            _fill_disk(image, cx + f * x / z, cy + f * y / z, radius_px, disks[i][2])
        return image

    def render_front(self, q: np.ndarray) -> np.ndarray:
        return self.render(q, self.front_pose)

    def render_wrist(self, q: np.ndarray) -> np.ndarray:
        return self.render(q, self.wrist_pose(q))

    def _background(self, pose: np.ndarray) -> np.ndarray:
        key = pose.tobytes()
        cached = self._cache.get(key)
        if cached is None:
            cached = self._raycast_background(pose)
            if len(self._cache) < 4 and np.array_equal(pose, self.front_pose):
                self._cache[key] = cached
        return cached.copy()

    def _raycast_background(self, pose: np.ndarray) -> np.ndarray:
        rays = self._rays @ pose[:3, :3].T.astype(np.float32)  # base frame directions
        origin = pose[:3, 3].astype(np.float32)
        h = rays.shape[0]
        mix = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
        image = np.broadcast_to(SKY_TOP * (1 - mix) + SKY_BOTTOM * mix, rays.shape).copy()
        dz = rays[..., 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            t = -origin[2] / dz
        hit = (t > 0) & np.isfinite(t)
        px = origin[0] + t * rays[..., 0]
        py = origin[1] + t * rays[..., 1]
        hit &= (px > -0.3) & (px < 0.8) & (np.abs(py) < 0.6)
        checker = ((np.floor(px / 0.05) + np.floor(py / 0.05)) % 2 == 0)[..., None]
        table = np.where(checker, TABLE_A, TABLE_B)
        image = np.where(hit[..., None], table, image).astype(np.uint8)
        return image[self._rows][:, self._cols]

    def _arm_disks(self, q: np.ndarray) -> list[tuple[np.ndarray, float, tuple[int, int, int]]]:
        frames = self.chain.frames(q[:6])
        points = [frames[i, :3, 3] for i in range(7)]
        disks: list[tuple[np.ndarray, float, tuple[int, int, int]]] = []
        for a, b in itertools.pairwise(points):
            n = max(2, int(np.linalg.norm(b - a) / 0.01))
            for s in np.linspace(0.0, 1.0, n):
                disks.append((a + s * (b - a), 0.025, LINK_COLOUR))
        for p in points[1:]:
            disks.append((p, 0.032, JOINT_COLOUR))
        flange = frames[-1]
        opening = float(q[6]) if len(q) > 6 else 0.0
        for side in (-1.0, 1.0):
            base = flange[:3, 3] + flange[:3, 1] * side * (opening / 2 + 0.01)
            for s in np.linspace(0.0, 0.08, 9):
                disks.append((base + flange[:3, 2] * s, 0.008, FINGER_COLOUR))
        return disks

    def _object_disks(self) -> list[tuple[np.ndarray, float, tuple[int, int, int]]]:
        return [(np.array(o.position), o.size / 2, o.colour) for o in self.objects]


def _fill_disk(image: np.ndarray, cx: float, cy: float, r: float, colour) -> None:
    h, w = image.shape[:2]
    x0, x1 = max(0, int(cx - r)), min(w, int(cx + r) + 1)
    y0, y1 = max(0, int(cy - r)), min(h, int(cy + r) + 1)
    if x0 >= x1 or y0 >= y1:
        return
    ys = np.arange(y0, y1)[:, None] + 0.5 - cy
    xs = np.arange(x0, x1)[None, :] + 0.5 - cx
    mask = xs * xs + ys * ys <= r * r
    image[y0:y1, x0:x1][mask] = colour
