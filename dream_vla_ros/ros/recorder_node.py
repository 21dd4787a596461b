"""The `recorder` node: one demonstration episode at a time into a rosbag2 MCAP bag.

Subscriptions are raw (serialized CDR): messages go to disk byte for byte,
never deserialized, on the episode writer's thread (dream_vla_ros.data.episode).
Message types are discovered from the graph, and each subscription copies its
publishers' reliability, as `ros2 bag record` does (a best-effort camera is
recorded best effort, a reliable joint-state stream reliably).

An episode starts only once every stream topic (`stream_topics`: cameras, joint
states, teleop commands) has delivered a message within `stream_timeout_s`: a
topic that is in the graph is not yet a stream that reaches the recorder (its
subscription may not have matched, a camera may not have rendered its first
frame), and an episode that starts before its streams has no images at its start.

Services (std_srvs/Trigger): `~/start`, `~/stop` (success), `~/stop_failed`
(the demonstration failed: kept, flagged), `~/discard` (deleted). The next
episode's instruction comes from the `instruction` parameter or `~/instruction`.
On start-up, episodes left "recording" by a recorder that died are recovered.
"""

from __future__ import annotations

import functools
import threading
import time
from pathlib import Path

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import SetParametersResult
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from std_msgs.msg import String
from std_srvs.srv import Trigger

from dream_vla_ros.data.episode import (
    EpisodeError,
    EpisodeWriter,
    free_disk_mb,
    list_episodes,
    needs_recovery,
    recover_episode,
)
from dream_vla_ros.ros.conversions import message_class
from dream_vla_ros.ros.guards import InputGuard
from dream_vla_ros.ros.node_main import run_node
from dream_vla_ros.ros.parameters import Param, declare_parameters

# what a demonstration needs: both cameras, the measured joints and the teleop command
EPISODE_TOPICS = (
    "/camera/front/image_raw",
    "/camera/wrist/image_raw",
    "/joint_states",
    "/dream_vla/teleop/command",
)

PARAMETERS = (
    Param("output_dir", "episodes", "Folder of the episodes (created if missing)"),
    Param(
        "topics",
        list(EPISODE_TOPICS),
        "Topics of an episode; every one needs a publisher when an episode starts",
    ),
    Param(
        "stream_topics",
        list(EPISODE_TOPICS),
        "Topics of `topics` that must have delivered a message within stream_timeout_s "
        "when an episode starts",
    ),
    Param(
        "stream_timeout_s",
        1.0,
        "A stream topic with no message for this long refuses the start [s]",
        (0.01, 60.0),
    ),
    Param("camera_topics", ["/camera/front/image_raw", "/camera/wrist/image_raw"], "Cameras"),
    Param("camera_roles", ["front", "wrist"], "Role of each camera topic"),
    Param("instruction", "", "Instruction of the next episode (also ~/instruction)", dynamic=True),
    Param("robot_type", "piper", "Robot name stored with each episode"),
    Param(
        "min_free_disk_mb",
        500.0,
        "Refuse to start, or stop the episode, below this much free disk [MB]",
        (0.0, 1e7),
        dynamic=True,
    ),
    Param("max_episode_s", 600.0, "Stop an episode after this long (0: no limit) [s]", (0.0, 1e6)),
    Param(
        "flush_period_s",
        0.5,
        "Close and flush an MCAP chunk this often: what a crash can lose [s]",
        (0.05, 10.0),
    ),
    Param("typestore", "ros2_kilted", "rosbags type store for message definitions"),
)


class RecorderNode(Node):
    def __init__(self) -> None:
        super().__init__("recorder")
        p = declare_parameters(self, PARAMETERS)
        self.p = p
        if len(p["camera_topics"]) != len(p["camera_roles"]):
            raise ValueError("camera_topics and camera_roles must have the same length")
        for name in ("camera_topics", "stream_topics"):
            missing = [t for t in p[name] if t not in p["topics"]]
            if missing:
                raise ValueError(
                    f"{name} {missing} are not in `topics`: add them to `topics` "
                    f"or leave them out of `{name}`"
                )
        self.root = Path(p["output_dir"]).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._recover_left_overs()

        self._lock = threading.Lock()
        self.writer: EpisodeWriter | None = None
        self.types: dict[str, str] = {}
        self.last_message_s: dict[str, float] = {}  # monotonic time of each topic's latest
        self.episodes_done = 0
        self.last_error = ""
        self.instruction = p["instruction"]
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.guard = InputGuard(self, report=self._publish_diagnostics)
        self.create_service(Trigger, "~/start", self._start)
        self.create_service(Trigger, "~/stop", lambda q, r: self._stop(r, True))
        self.create_service(Trigger, "~/stop_failed", lambda q, r: self._stop(r, False))
        self.create_service(Trigger, "~/discard", self._discard)
        self.create_subscription(
            String, "~/instruction", self.guard.callback("~/instruction", self._on_instruction), 10
        )
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.create_timer(0.5, self._discover)
        self.create_timer(1.0, self._guard)
        self.get_logger().info(f"recorder up: episodes in {self.root}")

    # -- start-up -------------------------------------------------------------
    def _recover_left_overs(self) -> None:
        for folder in list_episodes(self.root):
            try:
                if needs_recovery(folder):
                    meta = recover_episode(folder, self.p["typestore"])
                    self.get_logger().warning(f"{folder.name}: {meta.note}")
            except EpisodeError as exc:
                self.get_logger().error(f"cannot recover {folder.name}: {exc}")

    def _now_s(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    # -- topics ---------------------------------------------------------------
    def _discover(self) -> None:
        graph = dict(self.get_topic_names_and_types())
        for topic in self.p["topics"]:
            if topic in self.types or topic not in graph:
                continue
            types = graph[topic]
            if len(types) != 1:
                self.get_logger().error(
                    f"{topic} is published with several types {types}; not recording it",
                    throttle_duration_sec=10.0,
                )
                continue
            try:
                cls = message_class(types[0])
            except (ImportError, AttributeError, ValueError):
                self.get_logger().error(
                    f"cannot import message type {types[0]} of {topic}", throttle_duration_sec=10.0
                )
                continue
            infos = self.get_publishers_info_by_topic(topic)
            reliable = bool(infos) and all(
                i.qos_profile.reliability == ReliabilityPolicy.RELIABLE for i in infos
            )
            policy = ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT
            qos = QoSProfile(depth=100, reliability=policy)
            handler = self.guard.callback(topic, functools.partial(self._on_message, topic))
            self.create_subscription(cls, topic, handler, qos, raw=True)
            self.types[topic] = types[0]

    def _on_message(self, topic: str, data: bytes) -> None:
        self.last_message_s[topic] = time.monotonic()
        writer = self.writer
        if writer is not None:
            writer.write(topic, data, self.get_clock().now().nanoseconds)

    def _on_set_parameters(self, params) -> SetParametersResult:
        for param in params:
            if param.name == "instruction":  # the latest of parameter and topic wins
                self.instruction = str(param.value)
                self.get_logger().info(f"instruction of the next episode: '{param.value}'")
        return SetParametersResult(successful=True)

    def _on_instruction(self, msg: String) -> None:
        self.instruction = msg.data
        self.get_logger().info(f"instruction of the next episode: '{msg.data}'")

    # -- services ---------------------------------------------------------------
    def _start(self, _req, res):
        with self._lock:
            if self.writer is not None:
                res.success, res.message = False, f"already recording {self.writer.folder.name}"
                return res
            self._discover()
            missing = [t for t in self.p["topics"] if t not in self.types]
            if missing:
                res.success = False
                res.message = f"no publisher seen on {', '.join(missing)}; not starting"
                return res
            now = time.monotonic()
            timeout = self.p["stream_timeout_s"]
            silent = [
                t
                for t in self.p["stream_topics"]
                if now - self.last_message_s.get(t, float("-inf")) > timeout
            ]
            if silent:
                res.success = False
                res.message = (
                    f"no message on {', '.join(silent)} in the last {timeout:g} s "
                    "(stream_timeout_s); not starting"
                )
                return res
            free = free_disk_mb(self.root)
            floor = self._min_free_mb()
            if free < floor:
                res.success = False
                res.message = (
                    f"only {free:.0f} MB free in {self.root} "
                    f"(min_free_disk_mb {floor:.0f}); not starting"
                )
                return res
            instruction = self.instruction or self.get_parameter("instruction").value
            cameras = [
                {"topic": t, "role": r, "type": self.types[t]}
                for t, r in zip(self.p["camera_topics"], self.p["camera_roles"])
            ]
            try:
                self.writer = EpisodeWriter(
                    self.root,
                    {t: self.types[t] for t in self.p["topics"]},
                    instruction,
                    self._now_s,  # read once the bag is open: nothing is recorded before
                    robot={"type": self.p["robot_type"]},
                    cameras=cameras,
                    flush_period_s=self.p["flush_period_s"],
                    typestore=self.p["typestore"],
                )
            except (EpisodeError, OSError) as exc:
                res.success, res.message = False, f"cannot start: {exc}"
                return res
            res.success, res.message = True, f"recording {self.writer.folder}"
            self.get_logger().info(res.message)
            return res

    def _finish(self, status: str, success: bool | None, note: str = "") -> Path | None:
        writer, self.writer = self.writer, None
        if writer is None:
            return None
        folder = writer.close(status, success, self._now_s(), note)
        self.episodes_done += 1
        counts = ", ".join(f"{t} {n}" for t, n in writer.meta.message_counts.items())
        self.get_logger().info(f"{folder.name} {status} (success={success}): {counts}")
        return folder

    def _stop(self, res, success: bool):
        with self._lock:
            if self.writer is None:
                res.success, res.message = False, "not recording"
                return res
            folder = self._finish("finished", success)
            res.success, res.message = True, f"saved {folder}"
            return res

    def _discard(self, _req, res):
        with self._lock:
            writer, self.writer = self.writer, None
            if writer is None:
                res.success, res.message = False, "not recording"
                return res
            writer.discard()
            res.success, res.message = True, f"discarded {writer.folder.name}"
            self.get_logger().info(res.message)
            return res

    # -- guards and diagnostics -------------------------------------------------
    def _min_free_mb(self) -> float:
        # read live: `ros2 param set` raises the floor while an episode runs
        return float(self.get_parameter("min_free_disk_mb").value)

    def _guard(self) -> None:
        with self._lock:
            writer = self.writer
            if writer is not None:
                free = free_disk_mb(self.root)
                elapsed = self._now_s() - writer.meta.start_time_s
                reason = ""
                if free < self._min_free_mb():
                    reason = f"stopped: only {free:.0f} MB disk left"
                elif self.p["max_episode_s"] > 0 and elapsed > self.p["max_episode_s"]:
                    reason = f"stopped: longer than max_episode_s {self.p['max_episode_s']}"
                elif writer.error is not None:
                    reason = f"stopped: writer error {writer.error}"
                if reason:
                    self.last_error = reason
                    self.get_logger().error(f"{writer.folder.name} {reason}")
                    self._finish("finished", None, reason)
            self._publish_diagnostics()

    def _publish_diagnostics(self) -> None:
        writer = self.writer
        status = DiagnosticStatus(name="recorder", hardware_id="recorder")
        warning = self.guard.warning()
        status.level = (
            DiagnosticStatus.OK if not (self.last_error or warning) else DiagnosticStatus.WARN
        )
        status.message = warning or (f"recording {writer.folder.name}" if writer else "idle")
        values = {
            "episodes_saved": str(self.episodes_done),
            "free_disk_mb": f"{free_disk_mb(self.root):.0f}",
            "topics_seen": str(len(self.types)),
            "last_error": self.last_error,
            **self.guard.summary(),
        }
        if writer is not None:
            values["dropped"] = str(writer.meta.dropped_messages)
            for topic, n in writer.meta.message_counts.items():
                values[f"count{topic}"] = str(n)
        status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = self.get_clock().now().to_msg()
        self.pub_diag.publish(msg)

    def shutdown(self) -> None:
        """Ctrl-C: the open episode is closed and kept, flagged as interrupted."""
        with self._lock:
            self._finish("interrupted", None, "recorder shut down during the episode")


def main(args: list[str] | None = None) -> None:
    # One executor thread: callbacks hand bytes to the writer's thread, and a
    # MultiThreadedExecutor's spin thread busy-loops in this rclpy (docs/controller.md).
    run_node(
        "recorder",
        RecorderNode,
        SingleThreadedExecutor,
        (ValueError, EpisodeError),
        args,
    )


if __name__ == "__main__":
    main()
