"""The place task in the MuJoCo physics without ROS: a teleop source drives the
world directly (no ROS imports).

The arm follows the source's joints under the controller's velocity limits; the
gripper is the firmware simulator's `SimGripper`, stalled by the object the world
reports between the fingers, and its effort closes the fingers in the world, the
same coupling the `sim_world` node and the controller's simulator have through
/joint_states and /sim_world/gripper_contact. Used by the tests, the expert's
offline check and the physics benchmark.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dream_vla_ros.control import load_safety_config
from dream_vla_ros.robot.piper_sim import SimGripper
from dream_vla_ros.sim.place import PlaceLayout, PlaceMonitor, Snapshot
from dream_vla_ros.sim.task import HOME

GRIPPER_EFFORT_NM = 1.0  # the controller node's default (arm.gripper_effort_nm)
GRIPPER_SPEED_M_S = 0.1  # the firmware simulator's


@dataclass
class Rollout:
    monitor: PlaceMonitor
    times: list[float] = field(default_factory=list)
    joints: list[np.ndarray] = field(default_factory=list)  # (7,) measured
    efforts: list[float] = field(default_factory=list)
    held: list[str] = field(default_factory=list)  # the cube both fingers touch
    cubes: list[dict[str, np.ndarray]] = field(default_factory=list)
    frames: list[dict[str, np.ndarray]] = field(default_factory=list)  # camera -> image


def reset(world, layout: PlaceLayout, start: np.ndarray | None = None) -> np.ndarray:
    """A fresh physics state with the layout's objects and the arm (default HOME)."""
    q = HOME.copy() if start is None else np.asarray(start, dtype=np.float64)
    world.reset_physics()
    world.set_cubes(layout.cubes, layout.yaws)
    world.set_bowls(layout.bowls)
    world.set_joints(q)
    return q


def rollout(
    world,
    layout: PlaceLayout,
    source,
    duration_s: float,
    dt_s: float = 0.01,
    frame_every_s: float = 0.0,
    cameras: tuple[str, ...] = ("front",),
) -> Rollout:
    """Run `source` (a teleop source, started here) on `layout` for `duration_s`,
    rendering `cameras` every `frame_every_s` (0: never)."""
    cfg = load_safety_config()
    vmax = np.asarray(cfg.max_velocity)[:6]
    q = reset(world, layout)
    grip = SimGripper(
        float(cfg.position_upper[6]), GRIPPER_SPEED_M_S, q[6], q[6], GRIPPER_EFFORT_NM, enabled=True
    )
    source.start(0.0, q)
    out = Rollout(PlaceMonitor(layout))
    next_frame = 0.0
    steps = int(round(duration_s / dt_s))
    for k in range(1, steps + 1):
        t = k * dt_s
        target = source.command(t)
        if target is not None:
            q[:6] += np.clip(target[:6] - q[:6], -vmax * dt_s, vmax * dt_s)
            grip.target = float(np.clip(target[6], 0.0, grip.max_m))
        grip.obstacle_m = world.gripper_obstacle()
        grip.step(dt_s)
        q[6] = grip.position
        world.step(q, grip.effort_nm, dt_s)
        snap = Snapshot.of(world)
        out.monitor.update(snap)
        out.times.append(t)
        out.joints.append(q.copy())
        out.efforts.append(grip.effort_nm)
        out.held.append(world.held())
        out.cubes.append(snap.cubes)
        if frame_every_s > 0 and t + 1e-9 >= next_frame:
            out.frames.append({c: world.render(c) for c in cameras})
            next_frame += frame_every_s
    return out
