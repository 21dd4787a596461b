"""The newest synchronised observation from 1-2 cameras and the joint states (no ROS).

Message callbacks only store what arrived (`add_frame`, `add_joint_state`: cheap,
no decoding); the inference thread calls `take(now)`, which decodes the newest
frames and returns images, state and the capture stamp, or raises `Refused`
naming what is missing, stale, unsynchronised or malformed.

Timing rules (all on the ROS clock):
- the observation's stamp is the first camera's capture stamp (the "front" role);
- every camera's stamp lies within `sync_tolerance_s` of it;
- the joint state used is the one nearest that stamp, within `sync_tolerance_s`;
- the observation is no older than `max_age_s` when inference starts.
A frame is used (or refused) once: each front frame yields at most one chunk.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from dream_vla_ros.data.images import ImageDecodeError

CAMERA_KINDS = ("raw", "compressed")
CAMERA_ROLES = ("front", "wrist")
FRAME_HISTORY = 6


class Refused(Exception):
    """No observation can be formed now; `reason` is a short key, str() the sentence."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class CameraSpec:
    role: str  # front | wrist: the model sees the images in the configured order
    topic: str
    kind: str = "raw"  # raw (sensor_msgs/Image) | compressed (sensor_msgs/CompressedImage)
    width: int = 0  # expected size; 0 accepts any
    height: int = 0

    def __post_init__(self) -> None:
        if self.kind not in CAMERA_KINDS:
            raise ValueError(f"camera {self.topic}: kind must be one of {CAMERA_KINDS}")
        if self.role not in CAMERA_ROLES:
            raise ValueError(f"camera {self.topic}: role must be one of {CAMERA_ROLES}")
        if self.width < 0 or self.height < 0:
            raise ValueError(f"camera {self.topic}: expected size must be >= 0")


@dataclass
class Frame:
    stamp_s: float
    received_s: float
    decode: Callable[[], np.ndarray]  # deferred to the inference thread


@dataclass(frozen=True)
class SyncSettings:
    max_age_s: float = 0.5
    sync_tolerance_s: float = 0.05
    state_history: int = 400  # joint states kept (2 s at 200 Hz)


@dataclass
class TakenObservation:
    images: list[np.ndarray]
    state: np.ndarray
    stamp_s: float
    decode_s: float
    received_s: float = 0.0  # when the reference frame reached the node (ROS clock)


@dataclass
class BufferStats:
    frames: Counter = field(default_factory=Counter)  # per role
    dropped: int = 0  # front frames replaced before inference looked at them
    bad_joint_states: int = 0


class ObservationBuffer:
    def __init__(
        self,
        cameras: Sequence[CameraSpec],
        joint_names: Sequence[str],
        settings: SyncSettings | None = None,
    ) -> None:
        if not 1 <= len(cameras) <= 2:
            raise ValueError(f"the policy takes 1 or 2 cameras, got {len(cameras)}")
        if len({c.role for c in cameras}) != len(cameras):
            raise ValueError("each camera role (front, wrist) may be used once")
        self.cameras = tuple(cameras)
        self.joint_names = tuple(joint_names)
        self.settings = settings or SyncSettings()
        self.stats = BufferStats()
        self._lock = threading.Lock()
        self._new = threading.Condition(self._lock)
        # a few recent frames per camera: the wrist frame that matches a front frame
        # may arrive a little before or after it
        self._frames: dict[str, deque[Frame]] = {
            c.role: deque(maxlen=FRAME_HISTORY) for c in self.cameras
        }
        self._consumed_stamp: float | None = None
        self._ref_arrival = 0.0
        self._state_t: deque[float] = deque(maxlen=self.settings.state_history)
        self._state_q: deque[np.ndarray] = deque(maxlen=self.settings.state_history)
        self.last_state_problem = ""

    # -- producers (message callbacks) --------------------------------------------------
    def add_frame(self, role: str, frame: Frame) -> None:
        with self._lock:
            history = self._frames[role]
            reference = role == self.cameras[0].role
            if reference and history and history[-1].stamp_s != self._consumed_stamp:
                self.stats.dropped += 1
            history.append(frame)
            if reference:
                self._ref_arrival = time.monotonic()
            self.stats.frames[role] += 1
            self._new.notify_all()

    def add_joint_state(self, stamp_s: float, names: Sequence[str], positions: Sequence[float]):
        """Store one JointState; names may come in any order. Returns an error or ''."""
        index = {n: i for i, n in enumerate(names)}
        missing = [n for n in self.joint_names if n not in index]
        problem = ""
        if missing:
            problem = f"joint state lacks {missing} (has {list(names)})"
        elif len(positions) != len(names):
            problem = f"joint state has {len(names)} names but {len(positions)} positions"
        else:
            q = np.array([positions[index[n]] for n in self.joint_names], dtype=np.float64)
            if not np.all(np.isfinite(q)):
                problem = "joint state contains NaN or Inf"
        with self._lock:
            if problem:
                self.stats.bad_joint_states += 1
                self.last_state_problem = problem
                return problem
            if self._state_t and stamp_s < self._state_t[-1]:  # out of order: keep sorted
                self._state_t.clear()
                self._state_q.clear()
            self._state_t.append(stamp_s)
            self._state_q.append(q)
            self.last_state_problem = ""
            return ""

    # -- consumer (inference thread) ----------------------------------------------------
    def wait_for_new(self, timeout_s: float) -> bool:
        """Block until a reference frame that was not used yet is there (or timeout)."""
        with self._lock:
            return self._new.wait_for(self._has_new, timeout_s)

    def _has_new(self) -> bool:
        """An unused reference frame, and every other camera has caught up to its time.

        A camera that never catches up does not block forever: once the reference
        frame is older than the sync tolerance it is taken (and refused if unmatched)."""
        ref_history = self._frames[self.cameras[0].role]
        if not ref_history or ref_history[-1].stamp_s == self._consumed_stamp:
            return False
        ref = ref_history[-1].stamp_s
        tol = self.settings.sync_tolerance_s
        caught_up = all(
            self._frames[c.role] and self._frames[c.role][-1].stamp_s >= ref - tol
            for c in self.cameras[1:]
        )
        return caught_up or time.monotonic() - self._ref_arrival > tol

    def _match(self, role: str, stamp: float) -> Frame | None:
        history = self._frames[role]
        if not history:
            return None
        return min(history, key=lambda f: abs(f.stamp_s - stamp))

    def newest_stamp(self) -> float | None:
        """Capture stamp of the newest reference frame (None: no frame yet)."""
        with self._lock:
            history = self._frames[self.cameras[0].role]
            return history[-1].stamp_s if history else None

    def skip(self) -> None:
        """Mark the newest reference frame as used without looking at it (counted as dropped)."""
        with self._lock:
            history = self._frames[self.cameras[0].role]
            if history and history[-1].stamp_s != self._consumed_stamp:
                self._consumed_stamp = history[-1].stamp_s
                self.stats.dropped += 1

    def clear(self) -> None:
        """Forget frames and states (after ~/reset): the next chunk needs fresh inputs."""
        with self._lock:
            for history in self._frames.values():
                history.clear()
            self._state_t.clear()
            self._state_q.clear()
            self._consumed_stamp = None

    def take(self, now_s: float) -> TakenObservation | None:
        """The newest synchronised observation, None if nothing new, or raise Refused."""
        with self._lock:
            if not self._has_new():
                return None
            ref = self._frames[self.cameras[0].role][-1]
            frames = {c.role: self._match(c.role, ref.stamp_s) for c in self.cameras}
            self._consumed_stamp = ref.stamp_s
            states_t = list(self._state_t)
            states_q = list(self._state_q)
        return self._build(now_s, frames, ref, states_t, states_q)

    def _build(self, now_s, frames, ref: Frame, states_t, states_q) -> TakenObservation:
        s = self.settings
        for cam in self.cameras:
            frame = frames[cam.role]
            if frame is None:
                raise Refused("missing", f"no image from the {cam.role} camera ({cam.topic}) yet")
            age = now_s - frame.stamp_s
            if age > s.max_age_s:
                raise Refused(
                    "stale",
                    f"{cam.role} image ({cam.topic}) is {age:.3f} s old "
                    f"(max_observation_age_s {s.max_age_s})",
                )
            skew = abs(frame.stamp_s - ref.stamp_s)
            if skew > s.sync_tolerance_s:
                raise Refused(
                    "unsynchronised",
                    f"{cam.role} image is {skew:.3f} s apart from the "
                    f"{self.cameras[0].role} image (sync_tolerance_s {s.sync_tolerance_s})",
                )
        if not states_t:
            raise Refused("missing", "no joint state received yet")
        i = bisect.bisect_left(states_t, ref.stamp_s)
        best = min(
            (j for j in (i - 1, i) if 0 <= j < len(states_t)),
            key=lambda j: abs(states_t[j] - ref.stamp_s),
        )
        gap = abs(states_t[best] - ref.stamp_s)
        if gap > s.sync_tolerance_s:
            raise Refused(
                "unsynchronised" if now_s - states_t[-1] <= s.max_age_s else "stale",
                f"no joint state within {s.sync_tolerance_s} s of the image stamp "
                f"(nearest {gap:.3f} s away, newest {now_s - states_t[-1]:.3f} s old)",
            )
        start = time.perf_counter()
        images = []
        for cam in self.cameras:
            frame = frames[cam.role]
            try:
                image = frame.decode()
            except ImageDecodeError as exc:
                raise Refused("bad_image", f"{cam.role} camera ({cam.topic}): {exc}") from None
            h, w = image.shape[:2]
            if (cam.width and w != cam.width) or (cam.height and h != cam.height):
                raise Refused(
                    "bad_image",
                    f"{cam.role} camera ({cam.topic}): image is {w}x{h}, expected "
                    f"{cam.width or w}x{cam.height or h}",
                )
            images.append(image)
        return TakenObservation(
            images, states_q[best].copy(), ref.stamp_s, time.perf_counter() - start, ref.received_s
        )

    def input_problem(self, now_s: float) -> str:
        """A sentence about inputs that are missing or stale right now ('' if none)."""
        s = self.settings
        with self._lock:
            frames = {role: (h[-1] if h else None) for role, h in self._frames.items()}
            newest_state = self._state_t[-1] if self._state_t else None
            state_problem = self.last_state_problem
        for cam in self.cameras:
            frame = frames[cam.role]
            if frame is None:
                return f"no image from the {cam.role} camera ({cam.topic})"
            if now_s - frame.stamp_s > s.max_age_s:
                age = now_s - frame.stamp_s
                return f"{cam.role} camera ({cam.topic}) stale: newest image {age:.2f} s old"
        if state_problem:
            return state_problem
        if newest_state is None:
            return "no joint state received"
        if now_s - newest_state > s.max_age_s:
            return f"joint states stale: newest {now_s - newest_state:.2f} s old"
        return ""
