"""A small scripted demonstration dataset (LeRobot v3.0) for smoke tests and
benchmarks of the training code, made without a robot or a recording: the
schematic PiPER reaches towards the cube its instruction names ("reach the red
cube", green, blue; the cubes at the schematic scene's fixed places), with a
minimum-jerk move from a jittered home pose, closing the gripper at the end.
`observation.state` = the pose at frame t, `action` = the commanded pose (the
pose at t + 1, as a teleop command leads the arm). Front and wrist images are
rendered at a small size (the policy resizes to 224 anyway).

The closed-loop task with randomised objects lives in sim/; this is only the
fixture that makes training measurable in seconds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dream_vla_ros.control import JOINT_NAMES
from dream_vla_ros.control.interpolation import minimum_jerk
from dream_vla_ros.data.lerobot import CameraSpec, LeRobotWriter
from dream_vla_ros.sim.schematic import CameraModel, SchematicScene

START = np.array([0.0, 0.6, -0.6, 0.0, 0.3, 0.0, 0.05])  # arm up, well inside the limits
GOALS = {  # joint goals that bring the flange above each cube
    "red": np.array([-0.38, 1.35, -1.05, 0.0, 0.55, 0.0, 0.0]),
    "green": np.array([0.17, 1.45, -1.15, 0.0, 0.60, 0.0, 0.0]),
    "blue": np.array([0.59, 1.25, -0.95, 0.0, 0.50, 0.0, 0.0]),
}
CAMERAS = ("observation.images.front", "observation.images.wrist")


def toy_episode(colour: str, length: int, rng: np.random.Generator) -> np.ndarray:
    """(length + 1, 7) poses from a jittered home to the colour's goal, then a hold."""
    start = START + np.r_[rng.uniform(-0.08, 0.08, 6), 0.0]
    goal = GOALS[colour] + np.r_[rng.uniform(-0.03, 0.03, 6), 0.0]
    move = max(2, int(0.8 * length))
    s = minimum_jerk(np.arange(length + 1) / move)[:, None]
    return start + s * (goal - start)


def write_toy_dataset(
    root: str | Path,
    episodes: int = 6,
    length: int = 24,
    fps: int = 10,
    size: tuple[int, int] = (96, 72),
    seed: int = 0,
    codec: str = "",
) -> Path:
    rng = np.random.default_rng(seed)
    scene = SchematicScene(camera=CameraModel(width=size[0], height=size[1]))
    cams = [CameraSpec(key, size[1], size[0]) for key in CAMERAS]
    writer = LeRobotWriter(root, fps, cams, list(JOINT_NAMES), codec=codec)
    colours = list(GOALS)
    for e in range(episodes):
        colour = colours[e % len(colours)]
        poses = toy_episode(colour, length, rng)
        images = {
            CAMERAS[0]: [scene.render_front(q) for q in poses[:-1]],
            CAMERAS[1]: [scene.render_wrist(q) for q in poses[:-1]],
        }
        writer.add_episode(f"reach the {colour} cube", poses[:-1], poses[1:], images)
    writer.finish()
    return Path(root)
