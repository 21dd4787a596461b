"""MP4 video through PyAV: encode camera frames, decode them back by timestamp (no ROS imports).

The encoder is AV1 (`libsvtav1`, LeRobot's default) when the installed FFmpeg
has it, else H.264, else MPEG-4 Part 2. Frame `k` gets pts `k` in a 1/fps time
base, so its timestamp is exactly `k / fps`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np

PREFERRED_CODECS = ("libsvtav1", "libx264", "mpeg4")
os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its banner per file unless told errors only


class VideoError(ValueError):
    pass


@contextlib.contextmanager
def _keep_scheduling() -> Iterator[None]:
    """Restore the calling thread's scheduling policy after an encoder call.

    SVT-AV1, run as root, switches the thread that initialises it to SCHED_FIFO
    priority 99 and leaves it so. Every thread and process started from that
    thread afterwards inherits real-time priority: a busy one then starves the
    rest of the machine (this hung whole test runs after a dataset build).
    """
    policy, param = os.sched_getscheduler(0), os.sched_getparam(0)
    try:
        yield
    finally:
        if os.sched_getscheduler(0) != policy or os.sched_getparam(0) != param:
            os.sched_setscheduler(0, policy, param)


def pick_codec() -> str:
    import av

    for name in PREFERRED_CODECS:
        if name in av.codecs_available:
            return name
    raise VideoError(f"none of the video encoders {PREFERRED_CODECS} is available in PyAV")


class VideoWriter:
    def __init__(
        self, path: str | Path, fps: int, width: int, height: int, codec: str = ""
    ) -> None:
        import av

        if width % 2 or height % 2:
            raise VideoError(f"yuv420p video needs even sizes, got {width}x{height}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.codec = codec or pick_codec()
        self._container = av.open(str(self.path), mode="w")
        stream = self._container.add_stream(self.codec, rate=fps)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        stream.time_base = Fraction(1, fps)
        if self.codec == "libsvtav1":
            stream.options = {"crf": "30", "preset": "10", "g": "2"}
        elif self.codec == "libx264":
            stream.options = {"crf": "20", "preset": "veryfast", "g": "2"}
        else:
            stream.bit_rate = 4_000_000
        self._stream = stream
        self.frames = 0
        self.size = (width, height)

    def add(self, rgb: np.ndarray) -> None:
        import av

        if rgb.shape != (self.size[1], self.size[0], 3):
            raise VideoError(f"frame of shape {rgb.shape} in a {self.size[0]}x{self.size[1]} video")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        frame.pts = self.frames
        with _keep_scheduling():
            packets = self._stream.encode(frame)
        for packet in packets:
            self._container.mux(packet)
        self.frames += 1

    def close(self) -> None:
        with _keep_scheduling():
            packets = self._stream.encode()
        for packet in packets:
            self._container.mux(packet)
        self._container.close()


def read_video(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """All frames of a video: (timestamps_s (N,), frames (N, H, W, 3) uint8 RGB)."""
    import av

    path = Path(path)
    if not path.is_file():
        raise VideoError(f"video {path} does not exist")
    times: list[float] = []
    frames: list[np.ndarray] = []
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            for frame in container.decode(stream):
                if frame.pts is None:
                    continue
                times.append(float(frame.pts * stream.time_base))
                frames.append(frame.to_ndarray(format="rgb24"))
    except av.FFmpegError as exc:
        raise VideoError(f"cannot decode {path}: {exc}") from None
    if not frames:
        raise VideoError(f"{path} has no video frames")
    order = np.argsort(times)
    return np.asarray(times)[order], np.stack(frames)[order]


def frames_at(
    times: np.ndarray, frames: np.ndarray, wanted_s: np.ndarray, tolerance_s: float
) -> np.ndarray:
    """The frames whose timestamps match `wanted_s` within `tolerance_s` (else VideoError)."""
    idx = np.clip(np.searchsorted(times, wanted_s), 0, len(times) - 1)
    prev = np.clip(idx - 1, 0, len(times) - 1)
    pick = np.where(np.abs(times[prev] - wanted_s) < np.abs(times[idx] - wanted_s), prev, idx)
    error = np.abs(times[pick] - wanted_s)
    if np.any(error > tolerance_s):
        worst = int(np.argmax(error))
        raise VideoError(
            f"no video frame within {tolerance_s} s of t={wanted_s[worst]:.3f} s "
            f"(nearest {times[pick[worst]]:.3f} s)"
        )
    return frames[pick]
