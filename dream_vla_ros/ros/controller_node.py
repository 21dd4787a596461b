"""The `controller` node: owns the arm and executes action chunks under the safety limits.

The arm runs in this process (PiPER driver, or driver + CAN-level simulator), so
the safety loop never waits on DDS. The control tick runs on its own thread at
`control_rate_hz`; chunks, services and diagnostics are served by a
single-threaded executor on the main thread (docs/controller.md says why not a
multi-threaded one). All rules live in dream_vla_ros.control; this node only adapts.
"""

from __future__ import annotations

import dataclasses
import sys
import threading
import time
from collections import deque
from functools import partial

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64
from std_srvs.srv import SetBool, Trigger
from trajectory_msgs.msg import JointTrajectory

from dream_vla_ros.control import (
    JOINT_NAMES,
    ChunkController,
    ChunkRejected,
    ConfigError,
    Mode,
    load_safety_config,
)
from dream_vla_ros.control.loop import PeriodicLoop
from dream_vla_ros.robot import ArmError, FirmwareParams, PiperArm, PiperFirmwareSim, PiperSettings
from dream_vla_ros.ros.conversions import chunk_fields, joint_state
from dream_vla_ros.ros.guards import InputGuard, MessageRefused
from dream_vla_ros.ros.node_main import run_node
from dream_vla_ros.ros.parameters import Param, declare_parameters

BACKENDS = ("piper", "sim")

# The controller's parameters, each declared here once. The defaults are safe for
# a real arm: nothing enables the motors at start-up (auto_enable false) and the
# feedback timeout is the real CAN bus's; config/controller.yaml picks the real
# arm's backend, and the simulated graphs ask for what they change.
PARAMETERS = (
    Param("arm.backend", "sim", "Arm backend: 'piper' (real arm on socketcan) or 'sim'"),
    Param("arm.can_name", "can0", "CAN interface (socketcan) or virtual channel (sim)"),
    Param("arm.enable_timeout_s", 2.0, "Enable handshake timeout [s]", (0.1, 30.0)),
    Param(
        "arm.feedback_timeout_s", 0.1, "Joint feedback older than this is a fault [s]", (0.01, 1.0)
    ),
    Param("arm.speed_rate_percent", 100, "Firmware speed rate (0x151 byte 2) [%]", (1, 100)),
    Param("arm.gripper_effort_nm", 1.0, "Gripper effort [N*m]", (0.0, 5.0)),
    Param("limits_file", "", "Safety limits YAML; empty: the package's config/piper.yaml"),
    Param("control_rate_hz", 200.0, "Control loop rate [Hz]", (10.0, 1000.0)),
    Param("joint_state_rate_hz", 200.0, "Rate of /joint_states [Hz]", (1.0, 1000.0)),
    Param("auto_enable", False, "Enable the arm and start holding at start-up"),
    Param("chunk_topic", "/dream_vla/action_chunk", "Action chunks (JointTrajectory)"),
    Param("joint_state_topic", "/joint_states", "Measured joint states"),
    Param("diagnostics_period_s", 1.0, "Period of /diagnostics [s]", (0.05, 60.0)),
    Param(
        "sim.initial_positions",
        [0.0, 0.6, -0.6, 0.0, 0.3, 0.0, 0.02],
        "Simulator start pose (6 joints rad + gripper m)",
    ),
    Param(
        "sim.max_tracking_error_rad",
        0.0,
        "Simulator only: tracking-fault bound [rad] instead of the limits file's; 0: keep",
        (0.0, 2.0),
    ),
    Param(
        "sim.gripper_contact_topic",
        "",
        "Simulator only: std_msgs/Float64 opening [m] at which an object blocks the "
        "gripper (the MuJoCo world's /sim_world/gripper_contact; 0: none); '' = no objects",
    ),
)


def gripper_contact(sim: PiperFirmwareSim, msg: Float64) -> None:
    try:  # the opening at which the world's object blocks the simulated gripper
        sim.set_gripper_obstacle(msg.data)
    except ValueError as exc:
        raise MessageRefused(f"{exc}; publish the blocked opening in metres, 0 for none") from None


class ControllerNode(Node):
    def __init__(self) -> None:
        super().__init__("controller")
        p = declare_parameters(self, PARAMETERS)
        if p["arm.backend"] not in BACKENDS:
            raise ConfigError(
                f"arm.backend must be one of {', '.join(BACKENDS)}, got '{p['arm.backend']}'"
            )

        self.cfg = load_safety_config(p["limits_file"] or None)
        if p["arm.backend"] == "sim" and p["sim.max_tracking_error_rad"] > 0:
            # The simulated arm runs on threads of this process: on a starved host it
            # lags its commands by the stall, which a real arm does not. The real-arm
            # bound stays the one in the limits file.
            self.cfg = dataclasses.replace(
                self.cfg, max_tracking_error_rad=p["sim.max_tracking_error_rad"]
            )
        self.core = ChunkController(self.cfg, 1.0 / p["control_rate_hz"])
        self.sim: PiperFirmwareSim | None = None
        if p["arm.backend"] == "sim":
            initial = p["sim.initial_positions"]
            if len(initial) != len(JOINT_NAMES):
                raise ConfigError(
                    f"sim.initial_positions needs {len(JOINT_NAMES)} values, got {len(initial)}"
                )
            self.sim = PiperFirmwareSim(
                p["arm.can_name"], FirmwareParams.from_safety_config(self.cfg), initial
            ).start()
        self.arm = PiperArm(
            PiperSettings(
                can_name=p["arm.can_name"],
                bustype="virtual" if self.sim else "socketcan",
                enable_timeout_s=p["arm.enable_timeout_s"],
                feedback_timeout_s=p["arm.feedback_timeout_s"],
                speed_rate_percent=p["arm.speed_rate_percent"],
                gripper_effort_nm=p["arm.gripper_effort_nm"],
            )
        )
        try:
            self.arm.connect()
        except ArmError:
            if self.sim:
                self.sim.stop()
            raise

        self._arm_lock = threading.Lock()  # serialises CAN commands across threads
        self._stop_sent = False
        self._arm_faults: tuple[str, ...] = ()
        self._last_state_publish = 0.0
        self._state_period = 1.0 / p["joint_state_rate_hz"]
        self._loop_errors = 0
        self._chunk_ages: deque[float] = deque(maxlen=200)

        reliable = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        self.pub_state = self.create_publisher(JointState, p["joint_state_topic"], 10)
        self.pub_command = self.create_publisher(JointState, "~/command", reliable)
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.guard = InputGuard(self)
        self._diag_lock = threading.Lock()
        self.create_subscription(JointTrajectory, p["chunk_topic"], self._on_chunk, 10)
        for name, handler in (
            ("~/enable", self._srv_enable),
            ("~/disable", self._srv_disable),
            ("~/estop", self._srv_estop),
            ("~/reset_fault", self._srv_reset_fault),
        ):
            self.create_service(Trigger, name, handler)
        if self.sim:
            self.create_service(SetBool, "~/sim/set_feedback", self._srv_sim_feedback)
            contact = p["sim.gripper_contact_topic"]
            if contact:
                handler = self.guard.callback(contact, partial(gripper_contact, self.sim))
                self.create_subscription(Float64, contact, handler, 10)
        self.create_timer(p["diagnostics_period_s"], self._publish_diagnostics)

        self.loop = PeriodicLoop(p["control_rate_hz"], self._tick, on_error=self._loop_error)
        if p["auto_enable"]:
            # The arm (or the simulator on a busy host) may need a moment after the CAN
            # link comes up: retry for a few seconds before giving up. Nothing ticks yet.
            until = time.monotonic() + max(5.0, p["arm.enable_timeout_s"])
            ok, message = self._enable()
            while not ok and time.monotonic() < until:
                time.sleep(0.2)
                ok, message = self._enable()
            if not ok:
                self.get_logger().error(f"auto_enable failed: {message}")
        self.loop.start()
        self.get_logger().info(
            f"controller up: backend={p['arm.backend']} can={p['arm.can_name']} "
            f"rate={p['control_rate_hz']} Hz mode={self.core.mode.value}"
        )

    # -- control tick (control thread) ------------------------------------------------
    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _tick(self) -> None:
        now = self._now()
        state = self.arm.read_state()
        self._arm_faults = state.faults
        if state.faults and self.core.mode in (Mode.RUNNING, Mode.DISABLED):
            self.core.fault("arm fault: " + "; ".join(state.faults))
        command = self.core.tick(now, state.positions)
        if command is not None:
            with self._arm_lock:
                self.arm.command(command.position)
            self.pub_command.publish(
                joint_state(now, JOINT_NAMES, command.position, command.velocity)
            )
        elif self.core.mode in (Mode.FAULT, Mode.ESTOP) and not self._stop_sent:
            self._stop_sent = True
            self.get_logger().error(f"stopping the arm: {self.core.reason}")
            with self._arm_lock:
                self.arm.emergency_stop()
            self._publish_diagnostics()  # a fault is reported when it happens
        if now - self._last_state_publish >= self._state_period * 0.999:
            self._last_state_publish = now
            # effort: the gripper's reported one; NaN for the arm joints' (not read)
            efforts = np.full(len(JOINT_NAMES), np.nan)
            efforts[-1] = state.gripper_effort_nm
            self.pub_state.publish(
                joint_state(now, JOINT_NAMES, state.positions, state.velocities, efforts)
            )

    def _loop_error(self, exc: BaseException) -> None:
        if not self.context.ok():  # shutting down: publishers are gone, nothing to report
            self.loop.stop()
            return
        self._loop_errors += 1
        self.core.fault(f"control loop error: {exc!r}")
        self.get_logger().error(f"control tick failed: {exc!r}", throttle_duration_sec=1.0)

    # -- chunks (executor thread) -----------------------------------------------------
    def _on_chunk(self, msg: JointTrajectory) -> None:
        now = self._now()
        try:
            names, stamp, offsets, points = chunk_fields(msg)
            self.core.submit(names, stamp, offsets, points, now)
            self._chunk_ages.append(now - stamp)  # capture stamp -> accepted here
        except ChunkRejected as exc:
            self.get_logger().warning(f"rejected action chunk: {exc}", throttle_duration_sec=1.0)
        except Exception as exc:  # a malformed message must never take the node down
            self.core.stats.rejections["malformed"] += 1
            self.get_logger().warning(
                f"rejected malformed chunk: {exc!r}", throttle_duration_sec=1.0
            )

    # -- services ---------------------------------------------------------------------
    def _enable(self) -> tuple[bool, str]:
        if self.core.mode is Mode.RUNNING:
            return True, "already running"
        if self.core.mode is not Mode.DISABLED:
            return (
                False,
                f"controller is in {self.core.mode.value} ({self.core.reason}); call reset_fault",
            )
        try:
            # refuse an arm outside its limits before powering its motors
            self.core.check_in_range(self.arm.read_state().positions)
            with self._arm_lock:
                self.arm.enable()
            state = self.arm.read_state()
            if state.faults:
                return False, "arm reports: " + "; ".join(state.faults)
            self._stop_sent = False
            self.core.activate(state.positions, self._now())
        except (ArmError, RuntimeError) as exc:
            return False, str(exc)
        return True, "enabled; holding the current pose until a chunk arrives"

    def _srv_enable(self, _request, response):
        response.success, response.message = self._enable()
        return response

    def _srv_disable(self, _request, response):
        self.core.deactivate()
        with self._arm_lock:
            self.arm.disable()
        response.success, response.message = True, "controller stopped and motors disabled"
        return response

    def _srv_estop(self, _request, response):
        self.core.estop("emergency stop requested on ~/estop")
        self._stop_sent = True
        with self._arm_lock:
            self.arm.emergency_stop()
        self._publish_diagnostics()
        response.success, response.message = True, "emergency stop latched; call ~/reset_fault"
        return response

    def _srv_reset_fault(self, _request, response):
        if self.core.mode not in (Mode.FAULT, Mode.ESTOP):
            response.success, response.message = (
                False,
                f"no fault to reset (mode {self.core.mode.value})",
            )
            return response
        with self._arm_lock:
            self.arm.resume()
        deadline = time.monotonic() + 0.5
        state = self.arm.read_state()
        while state.faults and time.monotonic() < deadline:
            time.sleep(0.01)
            state = self.arm.read_state()
        if state.faults:
            response.success = False
            response.message = "arm still reports: " + "; ".join(state.faults)
            return response
        self.core.reset_fault()
        self._stop_sent = False
        response.success, response.message = True, "fault cleared; call ~/enable to resume"
        return response

    def _srv_sim_feedback(self, request, response):
        assert self.sim is not None
        self.sim.feedback_enabled = bool(request.data)
        response.success = True
        response.message = f"simulated CAN feedback {'on' if request.data else 'off'}"
        return response

    # -- diagnostics ------------------------------------------------------------------
    def _publish_diagnostics(self) -> None:
        # from the executor's timer and, on a fault, from the control thread
        with self._diag_lock:
            self._publish_diagnostics_locked()

    def _publish_diagnostics_locked(self) -> None:
        stats = self.core.stats
        mode = self.core.mode
        level = {
            Mode.RUNNING: DiagnosticStatus.OK,
            Mode.DISABLED: DiagnosticStatus.WARN,
            Mode.FAULT: DiagnosticStatus.ERROR,
            Mode.ESTOP: DiagnosticStatus.ERROR,
        }[mode]
        status = DiagnosticStatus(
            level=level,
            name="dream_vla/controller",
            hardware_id=self.arm.settings.can_name,
            message=mode.value + (f": {self.core.reason}" if self.core.reason else ""),
        )
        values = {
            "mode": mode.value,
            "holding": str(self.core.holding),
            "chunks_accepted": str(stats.chunks_accepted),
            "chunks_rejected": str(sum(stats.rejections.values())),
            "ticks": str(stats.ticks),
            "limited_ticks": str(stats.limited_ticks),
            # why: targets outside the soft range, or motion bounds (per joint)
            "limited_clamped_ticks": str(stats.clamped_ticks),
            "limited_slowed_ticks": str(stats.slowed_ticks),
            "clamped_by_joint": _counts(stats.clamped_by_joint),
            "slowed_by_joint": _counts(stats.slowed_by_joint),
            "watchdog_holds": str(stats.watchdog_holds),
            "floor_lifted_points": str(stats.floor_lifted_points),  # workspace floor
            "floor_ticks": str(stats.floor_ticks),
            "loop_overruns": str(self.loop.overruns),
            # process stalls seen by the driver (its feedback silence clock restarted)
            "arm_stalls": str(getattr(self.arm, "stalls", 0)),
            "loop_errors": str(self._loop_errors),
            "arm_faults": "; ".join(self._arm_faults) or "none",
        }
        if self.sim is not None:
            values["sim.last_feedback_s"] = f"{self.sim.last_feedback_s:.4f}"
        ages = np.array(list(self._chunk_ages)) * 1e3
        if ages.size:
            values["chunk_age_p50_ms"] = f"{np.percentile(ages, 50):.1f}"
            values["chunk_age_p95_ms"] = f"{np.percentile(ages, 95):.1f}"
        values.update({f"rejected.{k}": str(v) for k, v in sorted(stats.rejections.items())})
        values.update(self.guard.summary())  # callbacks the executor caught failing
        status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = self.get_clock().now().to_msg()
        self.pub_diag.publish(msg)

    # -- shutdown ---------------------------------------------------------------------
    def shutdown(self) -> None:
        self.loop.stop()
        self.core.deactivate()
        try:
            self.arm.close()
        finally:
            if self.sim:
                self.sim.stop()


def _counts(counter) -> str:
    """'joint2=12, gripper=340' (most first); '' when none."""
    return ", ".join(f"{name}={n}" for name, n in counter.most_common())


def main(args: list[str] | None = None) -> None:
    # Shorter GIL switch interval: the control thread gets the interpreter back
    # within ~0.5 ms of its deadline instead of the default 5 ms.
    sys.setswitchinterval(0.0005)
    # One executor thread: a MultiThreadedExecutor's spin thread busy-loops in this
    # rclpy, holding the GIL from the control thread (docs/controller.md).
    run_node(
        "controller",
        ControllerNode,
        SingleThreadedExecutor,
        (ArmError, ConfigError, ValueError),
        args,
    )


if __name__ == "__main__":
    main()
