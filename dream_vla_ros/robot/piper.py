"""`PiperArm`: the PiPER over the vendor's piper_sdk (`C_PiperInterface_V2`).

Converts SI units to the SDK's integers (0.001 degree, 0.001 mm) and back,
performs the enable handshake with a timeout, decodes arm status, error bits
and motor-driver status into readable faults, and treats stale CAN feedback or
the SDK's `isOk() == False` as a fault. The same class drives the real arm
(`bustype="socketcan"`) and the firmware simulator (`bustype="virtual"`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from dream_vla_ros.robot import piper_protocol as proto
from dream_vla_ros.robot.arm import ArmError, ArmState

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PiperSettings:
    can_name: str = "can0"
    bustype: str = "socketcan"  # "virtual" for the simulator
    enable_timeout_s: float = 2.0
    connect_timeout_s: float = 1.0
    feedback_timeout_s: float = 0.1  # newest joint frame older than this -> fault (20 frames)
    speed_rate_percent: int = 100  # 0x151 byte 2
    gripper_effort_nm: float = 1.0

    def __post_init__(self) -> None:
        if not self.can_name:
            raise ValueError("can_name must not be empty")
        if self.bustype not in ("socketcan", "virtual", "slcan", "pcan"):
            raise ValueError(f"bustype '{self.bustype}' is not supported")
        for key in ("enable_timeout_s", "connect_timeout_s", "feedback_timeout_s"):
            if not getattr(self, key) > 0:
                raise ValueError(f"{key} must be > 0, got {getattr(self, key)}")
        if not 1 <= self.speed_rate_percent <= 100:
            raise ValueError(f"speed_rate_percent must be in 1..100, got {self.speed_rate_percent}")
        if not 0 <= self.gripper_effort_nm <= 5:
            raise ValueError(f"gripper_effort_nm must be in 0..5 N*m, got {self.gripper_effort_nm}")


def decode_status_faults(arm_status: int, err_code: int) -> list[str]:
    """Words for a 0x2A1 arm status and its error bits (empty when healthy)."""
    faults = []
    if arm_status not in proto.ARM_STATUS_BENIGN:
        text = proto.ARM_STATUS_TEXT.get(arm_status, "unknown status")
        detail = ""
        if arm_status == proto.ARM_STATUS_ANGLE_LIMIT:
            joints = [
                f"joint{j + 1}" for j in range(6) if err_code & (1 << (proto.ERR_LIMIT_SHIFT + j))
            ]
            if joints:
                detail = f" ({', '.join(joints)})"
        faults.append(f"arm_status {arm_status} ({text}){detail}")
    comm = [f"joint{j + 1}" for j in range(6) if err_code & (1 << (proto.ERR_COMM_SHIFT + j))]
    if comm:
        faults.append(f"joint communication error on {', '.join(comm)}")
    return faults


def decode_driver_faults(motor: int, status_bits: int) -> list[str]:
    return [
        f"joint{motor} driver: {text}"
        for bit, text in proto.DRIVER_BITS.items()
        if status_bits & (1 << bit)
    ]


def _share_virtual_bus(sdk: object) -> None:
    """On a virtual bus let the SDK receive and send through one bus object.

    piper_sdk opens separate rx and tx buses on Linux. On socketcan with
    local_loopback=False the tx socket's frames reach nobody in-process; on
    python-can's virtual bus they would echo into the SDK's own rx queue and
    the never-read tx queue would grow without bound. Sharing one bus (what
    the SDK itself does on Windows and macOS) gives socketcan's behaviour.
    """
    wrapper = sdk.GetCanBus()  # type: ignore[attr-defined]
    if wrapper.send_bus is not wrapper.recv_bus:
        wrapper.send_bus.shutdown()
        wrapper.send_bus = wrapper.recv_bus


_INTERFACE: Any = None


def open_sdk(can_name: str) -> Any:
    """piper_sdk's `C_PiperInterface_V2` for `can_name`, keeping whole joint sets.

    The SDK writes the six joints of one cycle in three steps, one per frame (feedback
    0x2A5 joints 1-2, 0x2A6 3-4, 0x2A7 5-6; a leader arm's control frames 0x155-0x157
    likewise), into the object `GetArmJointMsgs` / `GetArmJointCtrl` return. A read
    between two frames mixes two cycles: after the arm (or the simulator catching up
    from a stall) moved, joints 1-2 are new and 3-6 old, a pose the arm never had (the
    tool point centimetres off). This interface also copies the six values in the SDK's
    reader thread once the last frame of a cycle has been parsed: `joint_feedback` and
    `joint_ctrl` hold (stamp, six values in 0.001 degree) of the newest whole cycle,
    None until one arrived.
    """
    global _INTERFACE
    if _INTERFACE is None:
        from piper_sdk import C_PiperInterface_V2  # deferred: the SDK logs on import

        class WholeJointsInterface(C_PiperInterface_V2):
            # piper_sdk keeps one instance per CAN name; this class keeps its own
            _instances: ClassVar[dict[str, Any]] = {}
            joint_feedback: tuple[float, tuple[int, ...]] | None = None
            joint_ctrl: tuple[float, tuple[int, ...]] | None = None

            def ParseCANFrame(self, rx_message: Any) -> None:  # noqa: N802 (the SDK's)
                super().ParseCANFrame(rx_message)
                frame_id = getattr(rx_message, "arbitration_id", None)
                if frame_id == proto.JOINT_FEEDBACK[-1]:
                    msg = self.GetArmJointMsgs()
                    self.joint_feedback = (msg.time_stamp, _six(msg.joint_state))
                elif frame_id == proto.JOINT_CTRL[-1]:
                    ctrl = self.GetArmJointCtrl()
                    self.joint_ctrl = (ctrl.time_stamp, _six(ctrl.joint_ctrl))

        _INTERFACE = WholeJointsInterface
    sdk = _INTERFACE(can_name, judge_flag=False, can_auto_init=False)
    sdk.joint_feedback = sdk.joint_ctrl = None  # nothing of an earlier connection
    return sdk


def _six(joints: Any) -> tuple[int, ...]:
    return tuple(int(getattr(joints, f"joint_{j + 1}")) for j in range(6))


class PiperArm:
    """The `robot.Arm` implementation for the AgileX PiPER."""

    def __init__(self, settings: PiperSettings) -> None:
        self.settings = settings
        self._sdk = None
        self._gripper_effort = int(round(settings.gripper_effort_nm * 1000))
        # Feedback silence is measured over time this process was running: see read_state.
        self._last_read = 0.0  # wall time of the previous read_state
        self._listening_since = 0.0  # wall time this process last resumed from a stall
        self.stalls = 0  # read_state gaps longer than half the feedback timeout

    # -- connection -------------------------------------------------------------------
    def connect(self) -> None:
        s = self.settings
        try:
            sdk = open_sdk(s.can_name)
            sdk.CreateCanBus(s.can_name, bustype=s.bustype, judge_flag=False)
        except Exception as exc:  # the SDK raises bare ConnectionError with little context
            raise ArmError(
                f"cannot open CAN interface '{s.can_name}' ({s.bustype}): {exc}; "
                "check that the interface exists and is up (e.g. `ip link set can0 up type can "
                "bitrate 1000000`)"
            ) from exc
        if s.bustype == "virtual":
            _share_virtual_bus(sdk)
        sdk.ConnectPort()
        self._sdk = sdk
        deadline = time.monotonic() + s.connect_timeout_s
        while time.monotonic() < deadline:
            if sdk.joint_feedback is not None and sdk.GetArmStatus().time_stamp > 0:
                return
            time.sleep(0.005)
        raise ArmError(
            f"no feedback from a PiPER on CAN '{s.can_name}' within {s.connect_timeout_s} s; "
            "check power, the CAN cable and that the arm is in CAN mode"
        )

    def close(self) -> None:
        if self._sdk is not None:
            self._sdk.DisconnectPort()
            self._sdk = None

    @property
    def sdk(self):
        if self._sdk is None:
            raise ArmError("PiperArm is not connected; call connect() first")
        return self._sdk

    # -- enable / disable -------------------------------------------------------------
    def enable(self) -> None:
        sdk = self.sdk
        s = self.settings
        deadline = time.monotonic() + s.enable_timeout_s
        # enable the gripper where it is: a target of 0 would close it unfiltered
        opening = max(0, sdk.GetArmGripperMsgs().gripper_state.grippers_angle)
        while True:
            sdk.EnableArm(proto.ALL_MOTORS)
            sdk.GripperCtrl(opening, self._gripper_effort, proto.GRIPPER_ENABLE, 0)
            time.sleep(0.02)
            status = sdk.GetArmEnableStatus()
            if all(status):
                break
            if time.monotonic() > deadline:
                off = [f"joint{j + 1}" for j, on in enumerate(status) if not on]
                raise ArmError(
                    f"PiPER did not enable {', '.join(off)} within {s.enable_timeout_s} s; "
                    "check the emergency-stop button, power and driver faults"
                )
        # CAN command mode, joint moves, configured speed rate
        sdk.MotionCtrl_2(proto.CTRL_MODE_CAN, proto.MOVE_J, s.speed_rate_percent, 0x00)

    def disable(self) -> None:
        sdk = self.sdk
        sdk.DisableArm(proto.ALL_MOTORS)
        sdk.GripperCtrl(0, self._gripper_effort, proto.GRIPPER_DISABLE, 0)

    # -- state and commands -----------------------------------------------------------
    def read_state(self) -> ArmState:
        sdk = self.sdk
        joints = sdk.GetArmJointMsgs()  # its stamp: the newest joint frame (liveness)
        stamp, millideg = sdk.joint_feedback  # the newest whole cycle (see open_sdk)
        gripper = sdk.GetArmGripperMsgs()
        positions = np.array(
            [proto.millideg_to_rad(v) for v in millideg]
            + [proto.micrometre_to_m(gripper.gripper_state.grippers_angle)]
        )
        high = sdk.GetArmHighSpdInfoMsgs()
        velocities = np.zeros(7)
        for j in range(6):
            velocities[j] = getattr(high, f"motor_{j + 1}").motor_speed / proto.MILLIRAD
        low = sdk.GetArmLowSpdInfoMsgs()
        enabled = True
        faults: list[str] = []
        for j in range(6):
            motor = getattr(low, f"motor_{j + 1}")
            code = motor.foc_status_code
            enabled = enabled and bool(code & (1 << proto.DRIVER_ENABLED_BIT))
            faults.extend(decode_driver_faults(j + 1, code))
        status = sdk.GetArmStatus().arm_status
        faults.extend(decode_status_faults(int(status.arm_status), int(status.err_code)))
        now = time.time()
        timeout = self.settings.feedback_timeout_s
        stalled = self._last_read > 0 and now - self._last_read > timeout / 2
        if stalled and joints.time_stamp >= self._listening_since:
            # This process was not running (the caller reads every few ms): the SDK's
            # reader thread, in this process too, could not take frames in meanwhile,
            # so the silence clock restarts now. Only if a frame came in since the
            # last restart: reads that are always late cannot hide a dead link, which
            # is still reported one timeout after the first stall.
            self._listening_since = now
            self.stalls += 1
        self._last_read = now
        age = now - joints.time_stamp
        silent = now - max(joints.time_stamp, self._listening_since)
        if joints.time_stamp <= 0 or silent > timeout:
            faults.append(
                f"no joint feedback on CAN '{self.settings.can_name}' for "
                f"{age * 1000:.0f} ms (limit {timeout * 1000:.0f} ms)"
            )
        if not sdk.isOk():
            faults.append(f"piper_sdk reports the CAN link '{self.settings.can_name}' is down")
        return ArmState(
            positions=positions,
            velocities=velocities,
            stamp_s=stamp,
            enabled=enabled,
            faults=tuple(faults),
            gripper_effort_nm=gripper.gripper_state.grippers_effort / 1000.0,
        )

    def command(self, positions: np.ndarray) -> None:
        if positions.shape != (7,) or not np.all(np.isfinite(positions)):
            raise ArmError(f"refusing a command that is not 7 finite numbers: {positions!r}")
        sdk = self.sdk
        md = [proto.rad_to_millideg(float(p)) for p in positions[:6]]
        sdk.JointCtrl(*md)
        gripper = proto.m_to_micrometre(max(0.0, float(positions[6])))
        sdk.GripperCtrl(gripper, self._gripper_effort, proto.GRIPPER_ENABLE, 0)

    def emergency_stop(self) -> None:
        self.sdk.MotionCtrl_1(proto.ESTOP_ENGAGE, 0x00, 0x00)

    def resume(self) -> None:
        self.sdk.MotionCtrl_1(proto.ESTOP_RESUME, 0x00, 0x00)

    # -- information ------------------------------------------------------------------
    def firmware_limits(self, timeout_s: float = 0.5) -> dict[str, tuple[float, float, float]]:
        """{joint: (lower_rad, upper_rad, max_speed_rad_s)} as the arm reports them (0x473).

        Queries one motor at a time: piper_sdk's GetAllMotorAngleLimitMaxSpd()
        stores a reference to its reused parse buffer for every motor, so after
        a burst of replies all six entries show the last motor's values.
        """
        sdk = self.sdk
        out = {}
        for motor in range(1, 7):
            sent = time.time()
            sdk.SearchMotorMaxAngleSpdAccLimit(motor, 0x01)
            deadline = time.monotonic() + timeout_s
            while True:
                reply = sdk.GetCurrentMotorAngleLimitMaxVel()
                m = reply.current_motor_angle_limit_max_vel
                if m.motor_num == motor and reply.time_stamp >= sent:
                    break
                if time.monotonic() > deadline:
                    raise ArmError(f"PiPER did not answer the limit query for joint{motor}")
                time.sleep(0.002)
            out[f"joint{motor}"] = (
                m.min_angle_limit / proto.DECIDEG_PER_RAD,
                m.max_angle_limit / proto.DECIDEG_PER_RAD,
                m.max_joint_spd / proto.MILLIRAD,
            )
        return out

    def firmware_version(self) -> str | None:
        version = self.sdk.GetPiperFirmwareVersion()
        return version if isinstance(version, str) else None
