"""A CAN-level PiPER firmware simulator on a python-can `virtual` bus.

It speaks the arm's side of the protocol so the unmodified piper_sdk (and so
`PiperArm`, the driver used on the real robot) talks to it unchanged:

- streams status 0x2A1, joints 0x2A5-0x2A7, gripper 0x2A8 and high-speed
  motor info 0x251-0x256 at `feedback_rate_hz`, and the low-speed driver info
  0x261-0x266 (enable bit 6) at `low_speed_rate_hz` (voltage, temperature and
  driver state change slowly; streaming them at the full rate only costs the
  SDK's reader thread CPU);
- obeys 0x471 enable/disable, 0x150 e-stop/resume, 0x151 control mode,
  0x155-0x157 joint targets and 0x159 gripper (opening and effort);
- moves the gripper as `SimGripper` does: at its speed towards the target until
  an object between the fingers (`gripper_obstacle_m`, set by whoever simulates
  the object: the MuJoCo world) stops it; a stalled gripper holds there and
  reports the commanded effort in 0x2A8, as the real one squeezing an object;
- answers 0x472 limit queries with 0x473 / 0x47C, and the 0x4AF version query;
- moves each joint toward its target under the firmware's speed (scaled by the
  0x151 speed rate) and acceleration limits;
- refuses out-of-range targets as the firmware does: the joint keeps its old
  target, the angle-limit bit of 0x2A1 is set and arm_status becomes 0x04.

python-can's virtual bus only connects buses of one process, so the simulator
runs in the process that owns the driver (the controller node), on its own
thread. `feedback_enabled = False` silences it to simulate a lost CAN link.
Every frame the simulated firmware reads or writes is in this one module
(longer than most), beside the joint and gripper models that answer them.
"""

from __future__ import annotations

import contextlib
import struct
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import can
import numpy as np

from dream_vla_ros.control.config import SafetyConfig
from dream_vla_ros.robot import piper_protocol as proto


@dataclass(frozen=True)
class FirmwareParams:
    lower_rad: tuple[float, ...]  # 6 joint limits as the firmware stores them
    upper_rad: tuple[float, ...]
    max_speed_rad_s: float
    max_acceleration_rad_s2: float
    gripper_max_m: float
    gripper_speed_m_s: float = 0.1
    feedback_rate_hz: float = 200.0
    low_speed_rate_hz: float = 50.0
    version: str = "S-V1.6-3"

    @classmethod
    def from_safety_config(cls, cfg: SafetyConfig, **overrides: object) -> FirmwareParams:
        values: dict[str, object] = {
            "lower_rad": tuple(cfg.position_lower[:6]),
            "upper_rad": tuple(cfg.position_upper[:6]),
            "max_speed_rad_s": cfg.firmware_max_velocity_rad_s,
            "max_acceleration_rad_s2": cfg.firmware_max_acceleration_rad_s2,
            "gripper_max_m": cfg.position_upper[6],
        }
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]


_RATE_FILTER_TAU_S = 0.01  # smoothing of the streamed targets' rate (feed-forward)
_STALL_TOLERANCE_M = 2e-4  # the target this far inside the object: the gripper squeezes


@dataclass
class SimGripper:
    """The PiPER gripper as the firmware drives it: the opening (m) moves towards
    the target at `speed_m_s`; an object between the fingers that blocks them at
    `obstacle_m` (0: nothing) stops the closing there. Stopped short of its target
    by the object, the gripper is *stalled*: it squeezes with the commanded effort
    and reports it, which is how a grasp looks on the real arm (not a fault).
    Once it squeezes, it keeps squeezing while its target stays inside the fingers'
    opening: a held object that shifts or turns between the fingers changes the
    reported width, and the gripper follows it with the effort on (the motor's
    current does not drop because the object moved). It stops squeezing when the
    target opens past the fingers or the fingers reach the target (the object is
    gone). No locking and no I/O: the firmware simulator and the offline rollouts
    step it."""

    max_m: float
    speed_m_s: float
    position: float = 0.0
    target: float = 0.0
    effort_command_nm: float = 0.0
    obstacle_m: float = 0.0
    enabled: bool = False
    holding: bool = False  # squeezing as of the last step (set by `step`)

    @property
    def stalled(self) -> bool:
        return (
            self.enabled
            and self.obstacle_m > 0.0
            and self.target < self.obstacle_m - _STALL_TOLERANCE_M
            and self.position <= self.obstacle_m + _STALL_TOLERANCE_M
        )

    @property
    def squeezing(self) -> bool:
        """Stalled on an object now, or squeezing since a stall with the target still
        inside the fingers' opening."""
        return self.stalled or (
            self.holding and self.enabled and self.target < self.position - _STALL_TOLERANCE_M
        )

    @property
    def effort_nm(self) -> float:
        """The effort the gripper reports: the commanded one while it squeezes an
        object, else none (free motion is modelled without friction)."""
        return self.effort_command_nm if self.squeezing else 0.0

    def step(self, dt: float) -> None:
        if not self.enabled or dt <= 0:
            self.holding = self.squeezing
            return
        error = self.target - self.position
        step = self.speed_m_s * dt
        position = self.position + float(np.clip(error, -step, step))
        if self.obstacle_m > 0.0 and position < self.obstacle_m and self.target < self.obstacle_m:
            # closing onto the object: the fingers stop where it blocks them; an
            # object reported after they passed its width (the report's latency)
            # pushes them back to it
            position = self.obstacle_m
        self.position = min(max(position, 0.0), self.max_m)
        self.holding = self.squeezing


def _limit_decideg(value_rad: float) -> int:
    return int(round(value_rad * proto.DECIDEG_PER_RAD))


class PiperFirmwareSim:
    """The arm's side of the bus. Start it before the driver connects."""

    def __init__(
        self,
        channel: str,
        params: FirmwareParams,
        initial_positions: Sequence[float] | None = None,
    ) -> None:
        self.channel = channel
        self.params = params
        # The firmware stores limits in 0.1 degree; judge targets against those values.
        self._lower_md = np.array([_limit_decideg(v) * 100 for v in params.lower_rad])
        self._upper_md = np.array([_limit_decideg(v) * 100 for v in params.upper_rad])
        # The joints' hard stops: a servo catching up after a stall can overshoot its
        # target, never the range the firmware accepts targets in.
        self._lower_rad = self._lower_md / proto.MILLIDEG_PER_RAD
        self._upper_rad = self._upper_md / proto.MILLIDEG_PER_RAD
        start = np.zeros(6) if initial_positions is None else np.asarray(initial_positions[:6])
        start = np.clip(start, params.lower_rad, params.upper_rad)
        self.position = start.astype(np.float64)  # (6,) rad
        self.velocity = np.zeros(6)  # (6,) rad/s
        self.target = self.position.copy()
        # Rate of change of the streamed targets: the servo feeds it forward so a
        # smoothly streamed trajectory is followed without a speed-dependent lag.
        self.target_velocity = np.zeros(6)
        self._target_time = np.full(6, -np.inf)
        # joint targets of 0x155 / 0x156 until their cycle's 0x157 (0.001 degree)
        self._staged: list[int | None] = [None] * 6
        opening = 0.0 if initial_positions is None else float(initial_positions[6])
        self.grip = SimGripper(
            params.gripper_max_m, params.gripper_speed_m_s, opening, opening, enabled=False
        )
        self.enabled = np.zeros(6, dtype=bool)
        self.ctrl_mode = proto.CTRL_MODE_STANDBY
        self.move_mode = proto.MOVE_J
        self.speed_rate = 100
        self.estop = False
        self.limit_bits = 0
        self.feedback_enabled = True
        self.last_feedback_s = 0.0  # wall-clock time of the last feedback frame sent
        self.frames_received = 0
        self._bus = can.Bus(interface="virtual", channel=channel, receive_own_messages=False)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"piper-sim-{channel}", daemon=True)

    # -- lifecycle --------------------------------------------------------------------
    def start(self) -> PiperFirmwareSim:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2.0)
        self._bus.shutdown()

    def __enter__(self) -> PiperFirmwareSim:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def gripper(self) -> float:
        """The gripper opening [m]."""
        return self.grip.position

    def starve(self, seconds: float) -> None:
        """Keep the firmware thread from running for `seconds`, as a loaded host does:
        afterwards it catches up the motion it missed and streams the new feedback."""
        with self._lock:
            time.sleep(seconds)

    def set_gripper_obstacle(self, opening_m: float) -> None:
        """The opening at which an object between the fingers blocks them (0: none)."""
        value = float(opening_m)
        if not np.isfinite(value) or value < 0.0:
            raise ValueError(f"gripper obstacle must be a finite opening >= 0 m, got {value}")
        with self._lock:
            self.grip.obstacle_m = min(value, self.params.gripper_max_m)

    @property
    def arm_status(self) -> int:
        if self.estop:
            return proto.ARM_STATUS_ESTOP
        if self.limit_bits:
            return proto.ARM_STATUS_ANGLE_LIMIT
        return proto.ARM_STATUS_NORMAL

    # -- main loop --------------------------------------------------------------------
    def _run(self) -> None:
        period = 1.0 / self.params.feedback_rate_hz
        rates = self.params.feedback_rate_hz / self.params.low_speed_rate_hz
        low_speed_every = max(1, round(rates))
        cycle = 0
        last = time.monotonic()
        deadline = last + period
        while not self._stop.is_set():
            timeout = deadline - time.monotonic()
            if timeout > 0:
                try:
                    frame = self._bus.recv(timeout)
                except can.CanOperationError:
                    return
                if frame is not None:
                    self._handle(frame)
                continue
            now = time.monotonic()
            with self._lock:
                # The arm keeps moving while this thread is starved of CPU: catch
                # up in steps of at most one period (bounded to 1 s of catch-up).
                elapsed = min(now - last, 1.0)
                while elapsed > 1e-9:
                    dt = min(elapsed, period)
                    self._step(dt)
                    elapsed -= dt
                frames = []
                if self.feedback_enabled:
                    frames = self._feedback_frames(low_speed=cycle % low_speed_every == 0)
            last = now
            cycle += 1
            for arbitration_id, data in frames:
                self._send(arbitration_id, data)
            if frames:
                self.last_feedback_s = time.time()
            deadline += period
            if deadline < now:
                deadline = now + period

    def _send(self, arbitration_id: int, data: bytes) -> None:
        frame = can.Message(arbitration_id=arbitration_id, data=data, is_extended_id=False)
        with contextlib.suppress(can.CanOperationError):  # the bus was shut down under us
            self._bus.send(frame)

    # -- commands ---------------------------------------------------------------------
    def _handle(self, frame: can.Message) -> None:
        self.frames_received += 1
        fid, data = frame.arbitration_id, bytes(frame.data).ljust(8, b"\0")
        replies: list[tuple[int, bytes]] = []
        with self._lock:
            if fid == proto.MOTION_CTRL_1:
                if data[0] == proto.ESTOP_ENGAGE:
                    self.estop = True
                    self.velocity[:] = 0.0
                    self.target = self.position.copy()
                elif data[0] == proto.ESTOP_RESUME:
                    self.estop = False
                    self.target = self.position.copy()
                    self.limit_bits = 0
            elif fid == proto.MOTION_CTRL_2:
                self.ctrl_mode, self.move_mode = data[0], data[1]
                self.speed_rate = min(max(int(data[2]), 0), 100)
            elif fid in proto.JOINT_CTRL:
                # The six targets of a cycle apply together, on its last frame: the
                # arm's firmware gets the three frames within half a millisecond, this
                # thread (starved between two of them) could otherwise move joints 1-2
                # for a whole catch-up before joints 3-6 learn of their targets.
                first = 2 * proto.JOINT_CTRL.index(fid)
                self._staged[first : first + 2] = struct.unpack(">ii", data)
                if fid == proto.JOINT_CTRL[-1]:
                    self._joint_targets(self._staged)
                    self._staged = [None] * 6
            elif fid == proto.GRIPPER_CTRL:
                angle, effort, code, _zero = struct.unpack(">iHBB", data)
                if code in (proto.GRIPPER_ENABLE, proto.GRIPPER_ENABLE_CLEAR):
                    self.grip.enabled = True
                elif code in (proto.GRIPPER_DISABLE, proto.GRIPPER_DISABLE_CLEAR):
                    self.grip.enabled = False
                if self.grip.enabled and not self.estop:
                    target = proto.micrometre_to_m(angle)
                    self.grip.target = min(max(target, 0.0), self.params.gripper_max_m)
                    self.grip.effort_command_nm = min(effort, 5000) / 1000.0
            elif fid == proto.MOTOR_ENABLE:
                motor, flag = data[0], data[1]
                motors = range(6) if motor in (proto.ALL_MOTORS, 0xFF) else [motor - 1]
                for m in motors:
                    if 0 <= m < 6:
                        self.enabled[m] = flag == proto.ENABLE_FLAG
                if motor in (proto.ALL_MOTORS, 0xFF):
                    self.grip.enabled = flag == proto.ENABLE_FLAG
                self.target = np.where(self.enabled, self.target, self.position)
            elif fid == proto.QUERY_LIMITS:
                replies.extend(self._limit_reply(data[0], data[1]))
            elif fid == proto.FIRMWARE:
                text = self.params.version.encode().ljust(8, b"\0")
                replies.append((proto.FIRMWARE, text[:8]))
        for arbitration_id, payload in replies:
            self._send(arbitration_id, payload)

    def _joint_targets(self, staged: list[int | None]) -> None:
        if self.estop or self.ctrl_mode != proto.CTRL_MODE_CAN:
            return
        for j, millideg in enumerate(staged):
            if millideg is None:
                continue
            bit = 1 << (proto.ERR_LIMIT_SHIFT + j)
            if not self._lower_md[j] <= millideg <= self._upper_md[j]:
                self.limit_bits |= bit
                continue
            self.limit_bits &= ~bit
            if self.enabled[j]:
                now = time.monotonic()
                new = proto.millideg_to_rad(millideg)
                elapsed = now - self._target_time[j]
                if elapsed < 0.05:
                    # First-order filter on the target's rate. Its gain per frame
                    # is elapsed / (tau + elapsed), so two frames that arrive back
                    # to back after a stall (elapsed ~0) cannot spike the estimate.
                    rate = (new - self.target[j]) / max(elapsed, 1e-6)
                    gain = elapsed / (_RATE_FILTER_TAU_S + elapsed)
                    estimate = self.target_velocity[j] + gain * (rate - self.target_velocity[j])
                else:
                    estimate = 0.0
                vmax = self.params.max_speed_rad_s
                self.target_velocity[j] = min(max(estimate, -vmax), vmax)
                self._target_time[j] = now
                self.target[j] = new

    def _limit_reply(self, motor: int, content: int) -> list[tuple[int, bytes]]:
        if not 1 <= motor <= 6:
            return []
        j = motor - 1
        if content == 0x01:
            payload = struct.pack(
                ">BhhHB",
                motor,
                _limit_decideg(self.params.upper_rad[j]),
                _limit_decideg(self.params.lower_rad[j]),
                int(round(self.params.max_speed_rad_s * proto.MILLIRAD)),
                0,
            )
            return [(proto.LIMITS_REPLY, payload)]
        if content == 0x02:
            acc = int(round(self.params.max_acceleration_rad_s2 * proto.MILLIRAD))
            return [(proto.ACC_LIMIT_REPLY, struct.pack(">BH5x", motor, acc))]
        return []

    # -- physics ----------------------------------------------------------------------
    def _step(self, dt: float) -> None:
        if dt <= 0:
            return
        moving = self.enabled & (not self.estop)
        vmax = self.params.max_speed_rad_s * self.speed_rate / 100.0
        amax = self.params.max_acceleration_rad_s2
        stale = time.monotonic() - self._target_time > 0.05
        v_ff = np.where(stale, 0.0, self.target_velocity)
        error = self.target + v_ff * dt - self.position
        # Feed-forward plus a correction that can still stop at the target. The
        # speed bound is the discrete-time one: this step's travel v*dt plus the
        # braking distance v^2/(2a) fits in the error, so a step (or a stall's
        # catch-up) approaches the target without overshooting it; the
        # continuous-time sqrt(2a|e|) overshot a 0.4 rad step by 3.5 mrad.
        distance = np.abs(error)
        braking = -amax * dt + np.sqrt((amax * dt) ** 2 + 2.0 * amax * distance)
        correction = np.minimum(distance / dt, braking)
        v_des = np.clip(v_ff + np.sign(error) * correction, -vmax, vmax)
        dv = np.clip(v_des - self.velocity, -amax * dt, amax * dt)
        velocity = np.where(moving, self.velocity + dv, 0.0)
        position = np.where(moving, self.position + velocity * dt, self.position)
        at_stop = (position < self._lower_rad) | (position > self._upper_rad)
        self.position = np.clip(position, self._lower_rad, self._upper_rad)
        self.velocity = np.where(at_stop, 0.0, velocity)
        if not self.estop:
            self.grip.step(dt)

    def _feedback_frames(self, low_speed: bool = True) -> list[tuple[int, bytes]]:
        md = [proto.rad_to_millideg(p) for p in self.position]
        at_target = bool(np.all(np.abs(self.target - self.position) < 1e-4))
        status = struct.pack(
            ">BBBBBBH",
            self.ctrl_mode,
            self.arm_status,
            self.move_mode,
            0,
            0 if at_target else 1,
            0,
            self.limit_bits,
        )
        enabled_bit = 1 << proto.DRIVER_ENABLED_BIT
        frames = [
            (proto.STATUS, status),
            (proto.JOINT_FEEDBACK[0], struct.pack(">ii", md[0], md[1])),
            (proto.JOINT_FEEDBACK[1], struct.pack(">ii", md[2], md[3])),
            (proto.JOINT_FEEDBACK[2], struct.pack(">ii", md[4], md[5])),
            (
                proto.GRIPPER_FEEDBACK,
                struct.pack(
                    ">ihBB",
                    proto.m_to_micrometre(self.grip.position),
                    int(round(self.grip.effort_nm * 1000)),
                    enabled_bit if self.grip.enabled else 0,
                    0,
                ),
            ),
        ]
        for j in range(6):
            speed = int(np.clip(round(self.velocity[j] * proto.MILLIRAD), -32768, 32767))
            position = int(round(self.position[j] * proto.MILLIRAD))
            frames.append((proto.HIGH_SPEED_INFO[j], struct.pack(">hhi", speed, 0, position)))
        for j in range(6 if low_speed else 0):
            bits = enabled_bit if self.enabled[j] else 0
            frames.append((proto.LOW_SPEED_INFO[j], struct.pack(">HhbBH", 240, 30, 30, bits, 0)))
        return frames
