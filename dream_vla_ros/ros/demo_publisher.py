"""`demo_chunk_publisher`: a stand-in policy that publishes smooth action chunks.

Until the policy node lands it drives the controller with a slow wave around
the pose it first measures, in the exact chunk format the policy will use.
"""

from __future__ import annotations

import math

import numpy as np
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from sensor_msgs.msg import JointState
from trajectory_msgs.msg import JointTrajectory

from dream_vla_ros.control import JOINT_NAMES
from dream_vla_ros.ros.conversions import chunk_message
from dream_vla_ros.ros.node_main import run_node

AMPLITUDE = np.array([0.35, 0.2, -0.2, 0.4, 0.3, 0.5, 0.02])  # rad, gripper m
FREQUENCY_HZ = 0.25


class DemoPublisher(Node):
    def __init__(self) -> None:
        super().__init__("demo_chunk_publisher")
        self.declare_parameter("chunk_rate_hz", 10.0)
        self.declare_parameter("horizon", 20)
        self.declare_parameter("action_dt_s", 0.05)
        self.home: np.ndarray | None = None
        self.t0 = 0.0
        self.pub = self.create_publisher(JointTrajectory, "/dream_vla/action_chunk", 10)
        self.create_subscription(JointState, "/joint_states", self._on_state, 10)
        rate = self.get_parameter("chunk_rate_hz").value
        self.create_timer(1.0 / rate, self._publish)

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _on_state(self, msg: JointState) -> None:
        if self.home is None and list(msg.name) == list(JOINT_NAMES):
            self.home = np.array(msg.position)
            self.t0 = self._now()

    def target(self, t: float) -> np.ndarray:
        assert self.home is not None
        phase = 2 * math.pi * FREQUENCY_HZ * max(0.0, t - self.t0)
        return self.home + AMPLITUDE * (1 - math.cos(phase)) / 2

    def _publish(self) -> None:
        if self.home is None:
            return
        now = self._now()
        dt = self.get_parameter("action_dt_s").value
        horizon = self.get_parameter("horizon").value
        points = np.array([self.target(now + (k + 1) * dt) for k in range(horizon)])
        self.pub.publish(chunk_message(now, JOINT_NAMES, points, dt))


def main(args: list[str] | None = None) -> None:
    run_node("demo_chunk_publisher", DemoPublisher, SingleThreadedExecutor, (ValueError,), args)


if __name__ == "__main__":
    main()
