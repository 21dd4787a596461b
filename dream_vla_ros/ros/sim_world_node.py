"""The `sim_world` node: the MuJoCo world (dream_vla_ros.sim.world) rendered from
the measured /joint_states, published as a front and a wrist camera, with the
"touch the cube" task's layout.

Images are stamped like the schematic `sim_camera` node's (the joint state they
show). `task.seed` (settable at run time) places the cubes (sim/task.py),
`task.target` names the cube to touch (empty: the seed's own); the node publishes
the layout on `~/task` (std_msgs/String, JSON: seed, instruction, target, cube
centres; transient local, so a late subscriber gets the current one).
"""

from __future__ import annotations

import json

from rcl_interfaces.msg import SetParametersResult
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import DurabilityPolicy, QoSProfile
from std_msgs.msg import String

from dream_vla_ros.ros.node_main import run_node
from dream_vla_ros.ros.parameters import Param
from dream_vla_ros.ros.sim_camera_node import CAMERA_PARAMETERS, SimCameraNode
from dream_vla_ros.sim.task import sample_layout


class SimWorldNode(SimCameraNode):
    NAME = "sim_world"
    PARAMETERS = (
        *CAMERA_PARAMETERS,
        Param(
            "task.seed",
            0,
            "Seed of the cube layout and the named cube (sim/task.py)",
            (0, 2**31 - 1),
            dynamic=True,
        ),
        Param(
            "task.target",
            "",
            "The colour to touch (red | green | blue); empty: the seed's own",
            dynamic=True,
        ),
    )

    def __init__(self) -> None:
        super().__init__()
        seed = self.get_parameter("task.seed").value
        target = self.get_parameter("task.target").value
        latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.pub_task = self.create_publisher(String, "~/task", latched)
        self._apply(int(seed), str(target))
        self.add_on_set_parameters_callback(self._on_set)

    def make_scene(self, width: int, height: int):
        from dream_vla_ros.sim.world import PiperWorld

        return PiperWorld(width=width, height=height)

    def _apply(self, seed: int, target: str) -> None:
        layout = sample_layout(seed, target)  # ValueError on an unknown colour
        with self._lock:
            self.scene.set_cubes(layout.cubes)
            self._last_rendered_stamp = -1.0  # the next frame shows the new layout
        self.layout = layout
        msg = String()
        msg.data = json.dumps(
            {
                "seed": seed,
                "instruction": layout.instruction,
                "target": layout.target,
                "cubes": {c: p.tolist() for c, p in layout.cubes.items()},
            }
        )
        self.pub_task.publish(msg)

    def _on_set(self, params) -> SetParametersResult:
        new = {p.name: p.value for p in params if p.name in ("task.seed", "task.target")}
        if new:
            seed = int(new.get("task.seed", self.layout.seed))
            target = str(new.get("task.target", self.get_parameter("task.target").value))
            try:
                self._apply(seed, target)
            except ValueError as exc:
                return SetParametersResult(successful=False, reason=str(exc))
        return SetParametersResult(successful=True)


def main(args: list[str] | None = None) -> None:
    run_node("sim_world", SimWorldNode, SingleThreadedExecutor, (ValueError, RuntimeError), args)


if __name__ == "__main__":
    main()
