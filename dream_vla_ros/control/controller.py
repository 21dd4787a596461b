"""The chunk controller: validation, splicing, safety filter, watchdog and e-stop latch.

ROS-free and clock-agnostic: every call takes `now` (seconds on the ROS clock,
so `use_sim_time` works) and the node supplies measurements and sends the
returned command to the arm. Thread-safe: chunks arrive on an executor thread
while `tick` runs on the control thread.

Modes:
  DISABLED  no commands are produced; `activate()` starts from the measured pose
  RUNNING   chunks are accepted; every tick yields one limited command
  FAULT     tracking error, driver or CAN trouble; nothing is commanded
  ESTOP     latched emergency stop; nothing is commanded
FAULT and ESTOP are left only through `reset_fault()`, which returns to DISABLED.
"""

from __future__ import annotations

import enum
import threading
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from dream_vla_ros.control.config import SafetyConfig
from dream_vla_ros.control.interpolation import SplicedTrajectory, splice
from dream_vla_ros.control.safety import FilteredCommand, SafetyFilter, TrackingFault
from dream_vla_ros.control.validation import ChunkRejected, TimedChunk, validate_chunk


class Mode(enum.Enum):
    DISABLED = "disabled"
    RUNNING = "running"
    FAULT = "fault"
    ESTOP = "estop"


# A tick that comes late moves the command over the time that really passed (so a
# loaded host does not make the arm fall behind the time-indexed chunk), but never
# over more than this many control periods (a stall does not become a jump).
MAX_TICK_GAP_PERIODS = 10.0


@dataclass
class ControllerStats:
    chunks_accepted: int = 0
    rejections: Counter = field(default_factory=Counter)
    ticks: int = 0
    limited_ticks: int = 0
    # of the limited ticks: those where a target lay outside the soft range, and
    # those where the motion bounds slowed a joint (a tick can be both); per joint
    clamped_ticks: int = 0
    slowed_ticks: int = 0
    clamped_by_joint: Counter = field(default_factory=Counter)
    slowed_by_joint: Counter = field(default_factory=Counter)
    watchdog_holds: int = 0
    # chunk targets lifted onto the workspace floor (control/workspace.py)
    floor_lifted_points: int = 0
    # ticks whose plan passed below the floor and whose target was lifted onto it
    floor_ticks: int = 0


class ChunkController:
    def __init__(self, cfg: SafetyConfig, period_s: float) -> None:
        self.cfg = cfg
        self.period = period_s
        # a late tick covers the time that really passed, up to this many periods
        self.filter = SafetyFilter(cfg, period_s, max_dt_s=MAX_TICK_GAP_PERIODS * period_s)
        self.mode = Mode.DISABLED
        self.reason = ""
        self.stats = ControllerStats()
        self._trajectory: SplicedTrajectory | None = None
        self._last_chunk_time = -np.inf
        self._last_tick_time: float | None = None
        self._holding = True
        self._activations = 0  # a chunk checked before a re-activation is not spliced
        self._lock = threading.Lock()

    # -- mode changes -----------------------------------------------------------------
    def activate(self, measured_position: np.ndarray, now_s: float) -> None:
        """DISABLED -> RUNNING, holding the measured pose until a chunk arrives."""
        with self._lock:
            if self.mode is not Mode.DISABLED:
                raise RuntimeError(f"cannot activate from mode '{self.mode.value}'")
            self.check_in_range(measured_position)
            self.filter.reset(measured_position)
            self._trajectory = None
            self._last_chunk_time = -np.inf
            self._last_tick_time = None
            self._holding = True
            self._activations += 1
            self.mode = Mode.RUNNING
            self.reason = ""

    def check_in_range(self, measured_position: np.ndarray) -> None:
        """Raise RuntimeError for a pose outside the hard limits by more than the chunk
        tolerance: the first command holds that pose, which the firmware refuses (a
        limit fault on every enable); the arm has to be moved back by hand. `activate`
        calls it; the node also calls it before it powers the motors."""
        cfg = self.cfg
        measured = np.asarray(measured_position, dtype=np.float64)
        tol = np.asarray(cfg.out_of_range_tolerance)
        lower, upper = np.asarray(cfg.position_lower), np.asarray(cfg.position_upper)
        if measured.shape != lower.shape or not np.all(np.isfinite(measured)):
            raise RuntimeError(f"cannot activate from a measured pose of {measured!r}")
        outside = (measured < lower - tol) | (measured > upper + tol)
        if np.any(outside):
            j = int(np.argmax(outside))
            raise RuntimeError(
                f"cannot activate: {cfg.joint_names[j]} is at {measured[j]:.3f}, outside its "
                f"limits [{lower[j]}, {upper[j]}]; move it back into range by hand"
            )

    def deactivate(self) -> None:
        with self._lock:
            if self.mode is Mode.RUNNING:
                self.mode = Mode.DISABLED
                self._trajectory = None

    def fault(self, reason: str) -> None:
        """Enter FAULT (an e-stop stays an e-stop). Idempotent."""
        with self._lock:
            if self.mode is not Mode.ESTOP and self.mode is not Mode.FAULT:
                self.mode = Mode.FAULT
                self.reason = reason
                self._trajectory = None

    def estop(self, reason: str = "emergency stop requested") -> None:
        with self._lock:
            if self.mode is not Mode.ESTOP:
                self.mode = Mode.ESTOP
                self.reason = reason
                self._trajectory = None

    def reset_fault(self) -> bool:
        """FAULT/ESTOP -> DISABLED. Returns False if there was nothing to reset."""
        with self._lock:
            if self.mode not in (Mode.FAULT, Mode.ESTOP):
                return False
            self.mode = Mode.DISABLED
            self.reason = ""
            return True

    # -- chunks and ticks -------------------------------------------------------------
    def submit(
        self,
        joint_names: Sequence[str],
        stamp_s: float,
        time_from_start_s: Sequence[float],
        points: Sequence[Sequence[float]],
        now_s: float,
    ) -> TimedChunk:
        """Validate a chunk and splice it onto the active motion, or raise ChunkRejected.

        Lifting targets onto the workspace floor (up to ~0.3 ms a target) runs outside
        the lock, so a long chunk below the floor never delays a tick; validation
        (against the command of that moment) and the splice (onto the motion of the
        moment it ends) hold it."""
        with self._lock:
            try:
                self._check_running()
                activation = self._activations
                chunk = validate_chunk(
                    joint_names,
                    stamp_s,
                    time_from_start_s,
                    points,
                    now_s,
                    self.cfg,
                    reference=self.filter.position,
                )
            except ChunkRejected as exc:
                self.stats.rejections[exc.reason] += 1
                raise
        try:
            chunk, lifted = self._onto_floor(chunk)
        except ChunkRejected as exc:
            with self._lock:
                self.stats.rejections[exc.reason] += 1
            raise
        with self._lock:
            try:
                # a fault, an e-stop or a re-activation while the targets were lifted
                # discards the chunk (it was checked against a command that is gone)
                self._check_running()
                if self._activations != activation:
                    raise ChunkRejected(
                        "not_running",
                        "the controller was re-activated while the chunk "
                        "was checked; send it again",
                    )
            except ChunkRejected as exc:
                self.stats.rejections[exc.reason] += 1
                raise
            self.stats.floor_lifted_points += lifted
            t_splice = self._last_tick_time if self._last_tick_time is not None else now_s
            self._trajectory = splice(
                chunk,
                t_splice,
                self.filter.position,
                self.filter.velocity,
                self.cfg.amax,
                self.cfg.soft_lower,
                self.cfg.soft_upper,
            )
            self._last_chunk_time = now_s
            self._holding = False
            self.stats.chunks_accepted += 1
            return chunk

    def _check_running(self) -> None:
        if self.mode is not Mode.RUNNING:
            raise ChunkRejected("not_running", f"controller is {self.mode.value}")

    def _onto_floor(self, chunk: TimedChunk) -> tuple[TimedChunk, int]:
        """The chunk with every target below the workspace floor lifted onto it, and
        how many were lifted (reads only the configuration: runs without the lock)."""
        ws = self.cfg.workspace
        if ws is None:
            return chunk, 0
        lower, upper = self.cfg.soft_lower, self.cfg.soft_upper
        positions, lifted = None, 0
        for k, q in enumerate(chunk.positions):
            up = ws.lift(q, lower, upper)
            if up is None:
                raise ChunkRejected(
                    "below_floor",
                    f"point {k} puts the tool point {ws.floor_z_m - ws.tool_height(q):.3f} m "
                    f"below the workspace floor (z {ws.floor_z_m} m) and no joint change "
                    "within the soft limits lifts it there",
                )
            if up is not q:
                if positions is None:
                    positions = chunk.positions.copy()
                positions[k] = up
                lifted += 1
        if positions is None:
            return chunk, 0
        positions.setflags(write=False)
        return TimedChunk(chunk.stamp_s, chunk.times_s, positions), lifted

    def _above_floor(
        self, target: np.ndarray, target_velocity: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """The sampled target lifted onto the workspace floor (at rest there) when the
        plan passes below it: the targets of a chunk are on or above the floor, but
        the splice's fading offset and the curve between them need not be."""
        ws = self.cfg.workspace
        if ws is None:
            return target, target_velocity
        up = ws.lift(target, self.cfg.soft_lower, self.cfg.soft_upper)
        if up is None or up is target:
            return target, target_velocity
        self.stats.floor_ticks += 1
        return up, None

    def tick(self, now_s: float, measured_position: np.ndarray | None) -> FilteredCommand | None:
        """One control step: the command to send now, or None when nothing may be sent."""
        with self._lock:
            if self.mode is not Mode.RUNNING:
                return None
            self.stats.ticks += 1
            timed_out = now_s - self._last_chunk_time > self.cfg.chunk_timeout_s
            if self._trajectory is None or timed_out:
                if self._trajectory is not None:
                    self.stats.watchdog_holds += 1
                self._trajectory = None
                self._holding = True
                target, target_velocity = self.filter.position, None
            else:
                target, target_velocity = self._trajectory.sample(now_s)
                target, target_velocity = self._above_floor(target, target_velocity)
            previous = self.filter.position
            try:
                dt = None if self._last_tick_time is None else now_s - self._last_tick_time
                command = self.filter.step(target, target_velocity, measured_position, dt)
            except TrackingFault as exc:
                self.mode = Mode.FAULT
                self.reason = f"tracking fault: {exc}"
                self._trajectory = None
                return None
            ws = self.cfg.workspace
            problem = "" if ws is None else ws.fault(previous, command.position)
            if problem:
                # the filter's state moved; nothing is sent and FAULT holds the arm
                self.mode = Mode.FAULT
                self.reason = f"workspace floor: {problem}"
                self._trajectory = None
                return None
            self._last_tick_time = now_s
            if command.limited:
                self.stats.limited_ticks += 1
                self._count_limits(command)
            return command

    def _count_limits(self, command: FilteredCommand) -> None:
        names = self.cfg.joint_names
        for flags, ticks, by_joint in (
            (command.clamped, "clamped_ticks", self.stats.clamped_by_joint),
            (command.slowed, "slowed_ticks", self.stats.slowed_by_joint),
        ):
            if flags is not None and flags.any():
                setattr(self.stats, ticks, getattr(self.stats, ticks) + 1)
                by_joint.update(names[j] for j in np.flatnonzero(flags))

    @property
    def holding(self) -> bool:
        """True while no chunk drives the arm (never received, or the watchdog fired)."""
        return self._holding

    @property
    def last_command(self) -> tuple[np.ndarray, np.ndarray]:
        return self.filter.position.copy(), self.filter.velocity.copy()
