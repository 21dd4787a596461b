"""The `sim_world` node: the MuJoCo world (dream_vla_ros.sim.world) rendered from
the measured /joint_states, published as a front and a wrist camera, with the
"touch the cube" task's layout.

Images are stamped like the schematic `sim_camera` node's (the joint state they
show). `task.seed` (settable at run time) places the cubes (sim/task.py); the
node publishes the layout on `~/task` (std_msgs/String, JSON: seed, instruction,
target, cube centres; transient local, so a late subscriber gets the current one).
"""

from __future__ import annotations

import json

from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import DurabilityPolicy, QoSProfile
from std_msgs.msg import String

from dream_vla_ros.ros.node_main import int_range, run_node
from dream_vla_ros.ros.sim_camera_node import SimCameraNode
from dream_vla_ros.sim.task import sample_layout


class SimWorldNode(SimCameraNode):
    NAME = "sim_world"

    def __init__(self) -> None:
        super().__init__()
        seed = self.declare_parameter(
            "task.seed",
            0,
            ParameterDescriptor(
                description="Seed of the cube layout and the named cube (sim/task.py)",
                integer_range=int_range(0, 2**31 - 1),
            ),
        ).value
        latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.pub_task = self.create_publisher(String, "~/task", latched)
        self._apply(int(seed))
        self.add_on_set_parameters_callback(self._on_set)

    def make_scene(self, width: int, height: int):
        from dream_vla_ros.sim.world import PiperWorld

        return PiperWorld(width=width, height=height)

    def _apply(self, seed: int) -> None:
        layout = sample_layout(seed)
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
        for p in params:
            if p.name == "task.seed":
                self._apply(int(p.value))
        return SetParametersResult(successful=True)


def main(args: list[str] | None = None) -> None:
    run_node("sim_world", SimWorldNode, SingleThreadedExecutor, (ValueError, RuntimeError), args)


if __name__ == "__main__":
    main()
