"""The `sim_camera` node: renders the schematic scene (dream_vla_ros.sim.schematic)
from the measured /joint_states and publishes a front and a wrist camera.

Each image is stamped with the stamp of the joint state it shows (the capture
time of a real camera), so when joint states stop the images go stale and the
policy refuses them, as it would with a frozen camera driver.
"""

from __future__ import annotations

import threading

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image, JointState

from dream_vla_ros.control import JOINT_NAMES
from dream_vla_ros.ros.conversions import compressed_message, image_message, time_to_sec
from dream_vla_ros.ros.guards import InputGuard, joint_positions
from dream_vla_ros.ros.node_main import run_node
from dream_vla_ros.ros.parameters import Param, declare_parameters
from dream_vla_ros.sim.schematic import CameraModel, SchematicScene

CAMERA_PARAMETERS = (
    Param("format", "raw", "raw (sensor_msgs/Image rgb8) | compressed (JPEG)"),
    Param("rate_hz", 10.0, "Frames per second per camera", (0.5, 60.0)),
    Param("width", 640, "Image width [px]", (32, 4096)),
    Param("height", 480, "Image height [px]", (32, 4096)),
    Param("front_topic", "/camera/front/image_raw", "Front camera topic"),
    Param("wrist_topic", "/camera/wrist/image_raw", "Wrist camera topic ('' = none)"),
    Param("joint_state_topic", "/joint_states", "Joint states to render"),
)


class SimCameraNode(Node):
    NAME = "sim_camera"
    PARAMETERS: tuple[Param, ...] = CAMERA_PARAMETERS

    def __init__(self) -> None:
        super().__init__(self.NAME)

        p = declare_parameters(self, self.PARAMETERS)
        width, height, rate = p["width"], p["height"], p["rate_hz"]
        self.kind = p["format"]
        if self.kind not in ("raw", "compressed"):
            raise ValueError(f"format must be raw or compressed, got '{self.kind}'")
        front, wrist, joints = p["front_topic"], p["wrist_topic"], p["joint_state_topic"]

        self.scene = self.make_scene(width, height)
        msg_type = Image if self.kind == "raw" else CompressedImage
        self.pub_front = self.create_publisher(msg_type, front, qos_profile_sensor_data)
        self.pub_wrist = (
            self.create_publisher(msg_type, wrist, qos_profile_sensor_data) if wrist else None
        )
        self._lock = threading.Lock()
        self._state: tuple[float, np.ndarray] | None = None
        self._last_rendered_stamp = -1.0
        self.frames = 0
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.guard = InputGuard(self, report=self._publish_diagnostics)
        self._joint_topic = joints
        self.create_subscription(
            JointState, joints, self.guard.callback(joints, self._on_state), 10
        )
        self.create_timer(1.0 / rate, self._render)
        self.create_timer(1.0, self._publish_diagnostics)
        self.get_logger().info(
            f"{self.NAME} up: {width}x{height} {self.kind} at {rate} Hz on {front}"
            + (f" and {wrist}" if wrist else "")
        )

    def make_scene(self, width: int, height: int):
        """The renderer: anything with render_front(q) and render_wrist(q)."""
        return SchematicScene(camera=CameraModel(width=width, height=height))

    def draw(self, stamp: float, q: np.ndarray) -> tuple[float, np.ndarray, np.ndarray | None]:
        """The front and wrist images (None: no wrist camera) of the arm at `q`, the
        joint state stamped `stamp`, and the stamp of what they show."""
        front = self.scene.render_front(q)
        wrist = self.scene.render_wrist(q) if self.pub_wrist is not None else None
        return stamp, front, wrist

    def _on_state(self, msg: JointState) -> None:
        q = joint_positions(msg, JOINT_NAMES)  # MessageRefused: the guard reports it
        with self._lock:
            self._state = (time_to_sec(msg.header.stamp), q)

    def _render(self) -> None:
        with self._lock:
            state = self._state
        if state is None or state[0] == self._last_rendered_stamp:
            return  # no new pose: a frozen source publishes nothing new
        stamp, q = state
        self._last_rendered_stamp = stamp
        convert = image_message if self.kind == "raw" else compressed_message
        try:
            stamp, front, wrist = self.draw(stamp, q)
        except Exception as exc:  # a pose the renderer cannot draw: skip the frame
            self.guard.refuse(self._joint_topic, f"cannot render this pose ({exc})")
            return
        self.pub_front.publish(convert(stamp, front, "front_camera"))
        if self.pub_wrist is not None:
            self.pub_wrist.publish(convert(stamp, wrist, "wrist_camera"))
        self.frames += 1

    def extra_diagnostics(self) -> dict[str, str]:
        """More /diagnostics values of a subclass."""
        return {}

    def _publish_diagnostics(self) -> None:
        warning = self.guard.warning()
        status = DiagnosticStatus(
            level=DiagnosticStatus.WARN if warning else DiagnosticStatus.OK,
            name=f"dream_vla/{self.NAME}",
            message=warning or "rendering",
        )
        values = {"frames": str(self.frames), **self.extra_diagnostics(), **self.guard.summary()}
        status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        self.pub_diag.publish(DiagnosticArray(status=[status]))


def main(args: list[str] | None = None) -> None:
    run_node("sim_camera", SimCameraNode, SingleThreadedExecutor, (ValueError,), args)


if __name__ == "__main__":
    main()
