"""The `teleop` node: a teleoperation source (dream_vla_ros.robot.teleop) -> the follower.

Every tick it publishes the source's current target as `JointState` on
`command_topic` (what the recorder stores as the demonstrated action) and
forwards the source's near future as a chunk to the controller, which owns the
follower arm and applies every safety limit (docs/architecture.md §4). The source
starts from the follower's measured pose, so a demonstration never begins with
a jump. When the source goes quiet (a leader arm that stops streaming) nothing
is forwarded and the controller's watchdog decelerates and holds.
"""

from __future__ import annotations

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import SetParametersResult
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from sensor_msgs.msg import JointState
from trajectory_msgs.msg import JointTrajectory

from dream_vla_ros.control import JOINT_NAMES, load_safety_config
from dream_vla_ros.robot.teleop import (
    PiperLeaderTeleop,
    ScriptedSettings,
    ScriptedTeleop,
    TeleopError,
    TeleopSource,
)
from dream_vla_ros.ros.conversions import chunk_message, joint_state
from dream_vla_ros.ros.guards import InputGuard, joint_positions
from dream_vla_ros.ros.node_main import run_node
from dream_vla_ros.ros.parameters import Param, declare_parameters

EXPERTS = ("touch_expert", "place_expert")

PARAMETERS = (
    Param(
        "source",
        "scripted",
        "scripted | piper_leader | touch_expert | place_expert (the simulated tasks)",
    ),
    Param("rate_hz", 50.0, "Command rate [Hz]", (1.0, 500.0)),
    Param("chunk_points", 10, "Points per forwarded chunk", (1, 200)),
    Param("chunk_topic", "/dream_vla/action_chunk", "Controller chunk topic"),
    Param("command_topic", "/dream_vla/teleop/command", "Teleop target (recorded action)"),
    Param("joint_state_topic", "/joint_states", "Follower joint states"),
    Param("leader.can_name", "can_leader", "CAN interface of the leader arm"),
    Param("leader.bustype", "socketcan", "socketcan | virtual"),
    Param("scripted.seed", 0, "Seed of the scripted waypoints"),
    Param("scripted.segment_s", 2.0, "Duration of one scripted move [s]", (0.2, 60.0)),
    Param(
        "scripted.joint_span_rad",
        0.35,
        "Scripted waypoints within +-span of the start pose [rad]",
        (0.01, 1.5),
    ),
    Param("limits_file", "", "Joint limits (empty: the package's config/piper.yaml)"),
    Param(
        "task.seed",
        -1,
        "touch_expert, place_expert: layout seed of the episode (sim/task.py, "
        "sim/place.py); -1 = go home and hold. "
        "Setting it restarts the expert from the measured pose",
        (-1, 2**31 - 1),
        dynamic=True,
    ),
    Param(
        "task.target",
        "",
        "touch_expert, place_expert: the cube to touch or move (red | green | blue); "
        "empty: the seed's own. "
        "Takes effect with the next task.seed",
        dynamic=True,
    ),
    Param(
        "task.start_seed",
        -1,
        "touch_expert: where task.seed -1 takes the arm: -1 = home, >= 0 = the seeded "
        "random start pose of sim/task.py start_pose (a demonstration from a random start). "
        "Takes effect with the next task.seed",
        (-1, 2**31 - 1),
        dynamic=True,
    ),
    Param(
        "task.bowl",
        "",
        "place_expert: the bowl to put the cube in (yellow | purple); empty: the seed's "
        "own. Takes effect with the next task.seed",
        dynamic=True,
    ),
    Param(
        "task.miss",
        "",
        "place_expert: 'DX,DY,Z' [m], a first approach beside the cube at height Z, then "
        "over it (sim/place.py Miss); empty: straight above it. Takes effect with the "
        "next task.seed",
        dynamic=True,
    ),
    Param(
        "task.hold",
        False,
        "touch_expert, place_expert: true = a task.seed set meanwhile builds its plan "
        "but the arm keeps streaming its current one until task.hold is set false (the "
        "collector plans an episode before its recording starts, then releases it)",
        dynamic=True,
    ),
)


class TeleopNode(Node):
    def __init__(self) -> None:
        super().__init__("teleop")
        p = declare_parameters(self, PARAMETERS)

        self.cfg = cfg = load_safety_config(p["limits_file"] or None)
        self.source: TeleopSource
        self._measured: np.ndarray | None = None
        self._held: TeleopSource | None = None  # planned under task.hold, not started
        self.kind = p["source"]
        if p["source"] in EXPERTS:
            self.source = self._expert(
                int(self.get_parameter("task.seed").value),
                str(self.get_parameter("task.target").value),
                int(self.get_parameter("task.start_seed").value),
                str(self.get_parameter("task.bowl").value),
                str(self.get_parameter("task.miss").value),
            )
            self.add_on_set_parameters_callback(self._on_set)
        elif p["source"] == "scripted":
            self.source = ScriptedTeleop(
                ScriptedSettings(
                    seed=p["scripted.seed"],
                    segment_s=p["scripted.segment_s"],
                    joint_span_rad=p["scripted.joint_span_rad"],
                ),
                cfg.soft_lower,
                cfg.soft_upper,
            )
        elif p["source"] == "piper_leader":
            self.source = PiperLeaderTeleop(p["leader.can_name"], p["leader.bustype"])
        else:
            raise ValueError(
                "source must be scripted, piper_leader, touch_expert or place_expert, "
                f"got '{p['source']}'"
            )
        self.dt = 1.0 / p["rate_hz"]
        self.horizon = np.arange(1, p["chunk_points"] + 1) * self.dt
        self.pub_chunk = self.create_publisher(JointTrajectory, p["chunk_topic"], 10)
        self.pub_command = self.create_publisher(JointState, p["command_topic"], 50)
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.guard = InputGuard(self, report=self._publish_diagnostics)
        topic = p["joint_state_topic"]
        self.create_subscription(JointState, topic, self.guard.callback(topic, self._on_state), 10)
        self.create_timer(1.0, self._publish_diagnostics)
        self.started = False
        self.ticks = 0
        self.create_timer(self.dt, self._tick)
        self.get_logger().info(
            f"teleop up: source {self.source.name} at {p['rate_hz']} Hz -> {p['chunk_topic']}"
        )

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _expert(
        self, seed: int, target: str, start_seed: int, bowl: str, miss: str = ""
    ) -> TeleopSource:
        from dream_vla_ros.sim.task import TouchExpert, sample_layout, start_pose

        lower, upper = self.cfg.soft_lower, self.cfg.soft_upper
        rest = None if start_seed < 0 else start_pose(start_seed, lower, upper)
        if self.kind == "place_expert":
            from dream_vla_ros.sim.place import Miss, PlaceExpert, sample_place_layout

            if seed >= 0:
                layout = sample_place_layout(seed, target, bowl)
                return PlaceExpert(layout, lower, upper, miss=Miss.parse(miss))
            return PlaceExpert(None, lower, upper, rest=rest)
        if seed >= 0:
            return TouchExpert(sample_layout(seed, target), lower, upper)
        return TouchExpert(None, lower, upper, rest=rest)

    def _on_set(self, params) -> SetParametersResult:
        new = {p.name: p.value for p in params}
        if {"task.target", "task.bowl", "task.miss"} & set(new) and "task.seed" not in new:
            from dream_vla_ros.sim.place import BOWL_COLOURS, Miss, check_choice
            from dream_vla_ros.sim.task import check_target

            try:
                check_target(str(new.get("task.target", "")))
                check_choice(str(new.get("task.bowl", "")), BOWL_COLOURS, "bowl")
                Miss.parse(str(new.get("task.miss", "")))
            except ValueError as exc:
                return SetParametersResult(successful=False, reason=str(exc))
        hold = bool(new.get("task.hold", self.get_parameter("task.hold").value))
        if "task.seed" in new:
            target = new.get("task.target", self.get_parameter("task.target").value)
            start = new.get("task.start_seed", self.get_parameter("task.start_seed").value)
            bowl = new.get("task.bowl", self.get_parameter("task.bowl").value)
            miss = new.get("task.miss", self.get_parameter("task.miss").value)
            try:
                source = self._expert(
                    int(new["task.seed"]), str(target), int(start), str(bowl), str(miss)
                )
            except (RuntimeError, ValueError) as exc:  # IK failure, unknown colour
                return SetParametersResult(successful=False, reason=str(exc))
            if self._held is not None:
                self._held.close()
            self._held = source
        if not hold and self._held is not None:
            self._switch(self._held)
            self._held = None
        return SetParametersResult(successful=True)

    def _switch(self, source: TeleopSource) -> None:
        self.source.close()
        self.source = source
        self.started = False
        if self._measured is not None:  # restart from where the arm is now
            self._begin(self._measured)

    def _on_state(self, msg: JointState) -> None:
        q = joint_positions(msg, JOINT_NAMES)  # MessageRefused: the guard reports it
        self._measured = q
        if not self.started:
            self._begin(q)

    def _publish_diagnostics(self) -> None:
        warning = self.guard.warning()
        status = DiagnosticStatus(
            level=DiagnosticStatus.WARN if warning else DiagnosticStatus.OK,
            name="dream_vla/teleop",
            message=warning or (f"{self.source.name}: streaming" if self.started else "waiting"),
        )
        values = {"ticks": str(self.ticks), **self.guard.summary()}
        status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        self.pub_diag.publish(DiagnosticArray(status=[status]))

    def _begin(self, q: np.ndarray) -> None:
        try:
            self.source.start(self._now(), q)
        except TeleopError as exc:
            self.get_logger().error(str(exc), throttle_duration_sec=5.0)
            return
        self.started = True
        self.get_logger().info("teleop: started from the follower's measured pose")

    def _tick(self) -> None:
        if not self.started:
            return
        now = self._now()
        target = self.source.command(now)
        future = self.source.preview(now, now + self.horizon)
        if target is None or future is None:
            return
        self.pub_command.publish(joint_state(now, JOINT_NAMES, target))
        self.pub_chunk.publish(chunk_message(now, JOINT_NAMES, future, self.dt))
        self.ticks += 1

    def shutdown(self) -> None:
        self.source.close()


def main(args: list[str] | None = None) -> None:
    run_node("teleop", TeleopNode, SingleThreadedExecutor, (ValueError, TeleopError), args)


if __name__ == "__main__":
    main()
