"""The `sim_world` node: the MuJoCo world (dream_vla_ros.sim.world) rendered from
the measured /joint_states, published as a front and a wrist camera, with the
layout of its task.

`task.kind` chooses the task (static):

- `touch` ("touch the {colour} cube", sim/task.py): a kinematic scene; images are
  rendered at the measured joints.
- `place` ("put the {colour} cube in the {colour} bowl", sim/place.py): the physics
  runs (`physics_rate_hz`, each tick catching up with the wall clock, at most 50 ms
  a tick, in 2 ms steps): the arm's joints and the gripper opening come from the
  measured joint states, the gripper's squeeze from their effort (the firmware's
  0x2A8 report). The arm is placed where the joint states say it was `arm_lag_s`
  ago, interpolated between the two states around that time, never past the newest
  state and catching up at most 1.5 times as fast when states come late
  (sim/arm_replay.py: an arm that jumps shakes the held cube out of the fingers).
  The opening at which a cube blocks the fingers goes out on `~/gripper_contact`
  (std_msgs/Float64, 0 = none) for the controller's simulated gripper, and the
  objects' state on `~/objects` (JSON: cube centres and speeds, fingers touching
  each cube, fingertip; sim/place.py `Snapshot`) for the success check. Images show
  the world as the physics left it, stamped with the time of the arm pose in them.

Images are stamped like the schematic `sim_camera` node's (the joint state they
show). `task.seed` (settable at run time) places the objects, `task.target` names
the cube (empty: the seed's own; an unknown colour is refused with the choices),
`task.bowl` the bowl (place); the node publishes the layout on `~/task`
(std_msgs/String, JSON; transient local, so a late subscriber gets the current
one). `camera.front_offset` ("dx,dy,dz,roll,pitch,yaw", metres and degrees; empty
= nominal; settable at run time) moves the front camera from its nominal pose.
"""

from __future__ import annotations

import json
import math
import time

import numpy as np
from rcl_interfaces.msg import SetParametersResult
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import DurabilityPolicy, QoSProfile
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64, String

from dream_vla_ros.control import JOINT_NAMES
from dream_vla_ros.ros.conversions import time_to_sec
from dream_vla_ros.ros.guards import joint_positions
from dream_vla_ros.ros.node_main import run_node
from dream_vla_ros.ros.parameters import Param
from dream_vla_ros.ros.sim_camera_node import CAMERA_PARAMETERS, SimCameraNode
from dream_vla_ros.sim.arm_replay import ArmReplay

TASKS = ("touch", "place")
MAX_PHYSICS_TICK_S = 0.05  # a longer host stall slows the world instead of jumping it


class SimWorldNode(SimCameraNode):
    NAME = "sim_world"
    PARAMETERS = (
        *CAMERA_PARAMETERS,
        Param("task.kind", "touch", "The task: touch (kinematic scene) | place (physics)"),
        Param(
            "task.seed",
            0,
            "Seed of the layout and the named objects (sim/task.py, sim/place.py)",
            (0, 2**31 - 1),
            dynamic=True,
        ),
        Param(
            "task.target",
            "",
            "The cube to touch or move (red | green | blue); empty: the seed's own",
            dynamic=True,
        ),
        Param(
            "task.bowl",
            "",
            "place: the bowl to put it in (yellow | purple); empty: the seed's own",
            dynamic=True,
        ),
        Param(
            "camera.front_offset",
            "",
            "Front camera offset from its nominal pose: dx,dy,dz,roll,pitch,yaw "
            "(m, deg); empty: nominal",
            dynamic=True,
        ),
        Param("physics_rate_hz", 100.0, "place: physics ticks per second", (10.0, 1000.0)),
        Param("objects_rate_hz", 20.0, "place: rate of ~/objects", (1.0, 200.0)),
        Param(
            "arm_lag_s",
            0.05,
            "place: the world shows the arm as the joint states had it this long ago [s]",
            (0.0, 0.5),
        ),
    )

    def __init__(self) -> None:
        self.task_kind = ""
        super().__init__()
        self._arm = ArmReplay(float(self.get_parameter("arm_lag_s").value))
        self._shown_stamp = -1.0  # the joint-state time of the arm pose the world shows
        self._physics_last = 0.0
        self.physics_ticks = 0
        self.physics_slow_ticks = 0  # ticks that a host stall cut to MAX_PHYSICS_TICK_S
        latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.pub_task = self.create_publisher(String, "~/task", latched)
        self._apply(
            int(self.get_parameter("task.seed").value),
            str(self.get_parameter("task.target").value),
            str(self.get_parameter("task.bowl").value),
        )
        self._set_offset(str(self.get_parameter("camera.front_offset").value))
        if self.task_kind == "place":
            self.pub_contact = self.create_publisher(Float64, "~/gripper_contact", 10)
            self.pub_objects = self.create_publisher(String, "~/objects", 10)
            self.create_timer(1.0 / self.get_parameter("physics_rate_hz").value, self._physics)
            self.create_timer(
                1.0 / self.get_parameter("objects_rate_hz").value, self._publish_objects
            )
        self.add_on_set_parameters_callback(self._on_set)

    def make_scene(self, width: int, height: int):
        from dream_vla_ros.sim.place import BOWL_COLOURS
        from dream_vla_ros.sim.world import PiperWorld

        kind = str(self.get_parameter("task.kind").value)
        if kind not in TASKS:
            raise ValueError(f"task.kind must be one of {', '.join(TASKS)}, got '{kind}'")
        self.task_kind = kind
        return PiperWorld(width=width, height=height, bowls=BOWL_COLOURS if kind == "place" else ())

    # -- layouts and the camera ---------------------------------------------------------
    def _apply(self, seed: int, target: str, bowl: str) -> None:
        """Place the seed's objects (ValueError on an unknown colour)."""
        if self.task_kind == "place":
            from dream_vla_ros.sim.place import sample_place_layout

            layout = sample_place_layout(seed, target, bowl)
            payload = layout.as_dict()
            with self._lock:
                self.scene.reset_physics()
                self.scene.set_cubes(layout.cubes, layout.yaws)
                self.scene.set_bowls(layout.bowls)
                newest = self._arm.to_newest()
                if newest is not None:
                    self.scene.set_joints(newest)
                self._physics_last = time.monotonic()
                self._last_rendered_stamp = -1.0
        else:
            from dream_vla_ros.sim.task import sample_layout

            layout = sample_layout(seed, target)
            payload = {
                "seed": seed,
                "instruction": layout.instruction,
                "target": layout.target,
                "cubes": {c: p.tolist() for c, p in layout.cubes.items()},
            }
            with self._lock:
                self.scene.set_cubes(layout.cubes)
                self._last_rendered_stamp = -1.0  # the next frame shows the new layout
        self.layout = layout
        payload["task"] = self.task_kind
        payload["camera_offset"] = self.scene.front_offset.as_list()
        self.pub_task.publish(String(data=json.dumps(payload)))

    def _set_offset(self, text: str) -> None:
        from dream_vla_ros.sim.world import CameraOffset

        offset = CameraOffset.parse(text) if text.strip() else CameraOffset()
        with self._lock:
            self.scene.set_front_offset(offset)
            self._last_rendered_stamp = -1.0

    def _on_set(self, params) -> SetParametersResult:
        new = {p.name: p.value for p in params}
        try:
            if "camera.front_offset" in new:
                self._set_offset(str(new["camera.front_offset"]))
            if {"task.seed", "task.target", "task.bowl"} & set(new):
                seed = int(new.get("task.seed", self.get_parameter("task.seed").value))
                target = str(new.get("task.target", self.get_parameter("task.target").value))
                bowl = str(new.get("task.bowl", self.get_parameter("task.bowl").value))
                self._apply(seed, target, bowl)
        except ValueError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        return SetParametersResult(successful=True)

    # -- physics ------------------------------------------------------------------------
    def _on_state(self, msg: JointState) -> None:
        q = joint_positions(msg, JOINT_NAMES)  # MessageRefused: the guard reports it
        effort = 0.0
        if len(msg.effort) == len(msg.name) and "gripper" in msg.name:
            value = float(msg.effort[list(msg.name).index("gripper")])
            effort = value if math.isfinite(value) and value > 0 else 0.0
        stamp = time_to_sec(msg.header.stamp)
        with self._lock:
            self._state = (stamp, q)
            self._arm.add(stamp, q, effort)

    def _physics(self) -> None:
        """Run the world up to now; the arm moves to where it was `arm_lag_s` ago
        (sim/arm_replay.py: never past the newest joint state, never jumping)."""
        now = time.monotonic()
        ros_now = self.get_clock().now().nanoseconds * 1e-9
        with self._lock:
            if not self._arm.history:
                self._physics_last = now
                return
            elapsed = now - self._physics_last
            self._physics_last = now
            if elapsed > MAX_PHYSICS_TICK_S:
                elapsed = MAX_PHYSICS_TICK_S
                self.physics_slow_ticks += 1
            shown, q, effort = self._arm.advance(ros_now, elapsed)
            self.scene.step(q, effort, elapsed)
            self._shown_stamp = shown
            self.physics_ticks += 1
            contact = self.scene.gripper_obstacle()
        self.pub_contact.publish(Float64(data=contact))

    def _publish_objects(self) -> None:
        from dream_vla_ros.sim.place import Snapshot

        with self._lock:
            snap = Snapshot.of(self.scene).as_dict()
            snap["held"] = self.scene.held()
            snap["seed"] = self.layout.seed
        self.pub_objects.publish(String(data=json.dumps(snap)))

    def draw(self, stamp: float, q: np.ndarray) -> tuple[float, np.ndarray, np.ndarray | None]:
        if self.task_kind != "place":
            return super().draw(stamp, q)
        self._physics()  # the images show the world as of now
        with self._lock:
            front = self.scene.render("front")
            wrist = self.scene.render("wrist") if self.pub_wrist is not None else None
            return self._shown_stamp, front, wrist

    def extra_diagnostics(self) -> dict[str, str]:
        if self.task_kind != "place":
            return {"task": self.task_kind}
        with self._lock:
            return {
                "task": self.task_kind,
                "physics_time_s": f"{self.scene.time_s:.3f}",
                "physics_ticks": str(self.physics_ticks),
                "physics_slow_ticks": str(self.physics_slow_ticks),
                "arm_late_ticks": str(self._arm.late_ticks),
            }


def main(args: list[str] | None = None) -> None:
    run_node("sim_world", SimWorldNode, SingleThreadedExecutor, (ValueError, RuntimeError), args)


if __name__ == "__main__":
    main()
