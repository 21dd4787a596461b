"""Episode bags -> a LeRobot v3.0 training dataset (`dream-vla dataset build`; no ROS imports).

Sampling, per episode, on a grid at the action rate `fps`:

- the grid runs from the first time every stream has a sample to the last time
  every stream still has one (t_k = t_0 + k / fps);
- `observation.state` = the measured joint state (`state_topic`) linearly
  interpolated at t_k; the nearest measured sample must be within
  `state_tolerance_s`;
- `action` = the teleop command (`action_topic`) interpolated at t_k, same
  tolerance: the target the demonstrator asked for at that instant;
- each camera: the newest frame captured at or before t_k (a frame from the
  future would leak information), at most `image_tolerance_s` old.

A grid point that breaks a tolerance means a stream dropped out: the episode
is skipped with a reason naming the stream and the gap (never silently
stretched). By default only episodes marked successful are used.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dream_vla_ros.control import JOINT_NAMES
from dream_vla_ros.data.bags import (
    BagError,
    Series,
    image_refs,
    iter_images,
    open_bag,
    read_joint_series,
)
from dream_vla_ros.data.episode import EpisodeError, list_episodes, needs_recovery, read_meta
from dream_vla_ros.data.lerobot import CameraSpec, LeRobotWriter, check_output_folder


@dataclass(frozen=True)
class BuildSettings:
    fps: int = 10
    state_topic: str = "/joint_states"
    action_topic: str = "/dream_vla/teleop/command"
    cameras: tuple[tuple[str, str], ...] = ()  # (role, topic); empty: from each episode.json
    state_tolerance_s: float = 0.05
    image_tolerance_s: float = 0.15
    include: str = "success"  # success | all
    typestore: str = "ros2_kilted"
    joint_map: tuple[tuple[str, str], ...] = ()
    codec: str = ""

    def __post_init__(self) -> None:
        if not 1 <= self.fps <= 1000:
            raise ValueError(f"fps must be in 1..1000, got {self.fps}")
        if self.include not in ("success", "all"):
            raise ValueError(f"include must be success or all, got '{self.include}'")
        if self.state_tolerance_s <= 0 or self.image_tolerance_s <= 0:
            raise ValueError("tolerances must be > 0 s")


@dataclass
class BuildReport:
    out_dir: str
    episodes: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    total_frames: int = 0
    codec: str = ""

    def summary(self) -> str:
        lines = [
            f"dataset {self.out_dir}: {len(self.episodes)} episodes, {self.total_frames} frames"
            f" ({self.codec} video)"
        ]
        for ep in self.episodes:
            lines.append(
                f"  {ep['source']}: {ep['frames']} frames, max sync error state "
                f"{ep['state_sync_ms']:.1f} ms, images {ep['image_age_ms']:.1f} ms"
            )
        for sk in self.skipped:
            lines.append(f"  skipped {sk['episode']}: {sk['reason']}")
        return "\n".join(lines)


def _sample(series: Series, grid: np.ndarray, tolerance: float) -> tuple[np.ndarray, float]:
    t = series.times_s
    idx = np.clip(np.searchsorted(t, grid), 1, len(t) - 1)
    nearest = np.minimum(np.abs(t[idx] - grid), np.abs(t[idx - 1] - grid))
    worst = int(np.argmax(nearest))
    if nearest[worst] > tolerance:
        raise BagError(
            f"{series.topic} has a gap: no sample within {tolerance} s of "
            f"t={grid[worst] - grid[0]:.2f} s into the episode (nearest {nearest[worst]:.3f} s)"
        )
    values = np.stack([np.interp(grid, t, series.positions[:, j]) for j in range(len(JOINT_NAMES))])
    return values.T, float(nearest.max())


def _pick_frames(stamps: np.ndarray, grid: np.ndarray, tolerance: float, topic: str) -> np.ndarray:
    """Index (into stamps order) of the newest frame at or before each grid time."""
    pos = np.searchsorted(stamps, grid, side="right") - 1
    if np.any(pos < 0):
        raise BagError(f"{topic}: no frame before the start of the grid")
    age = grid - stamps[pos]
    worst = int(np.argmax(age))
    if age[worst] > tolerance:
        raise BagError(
            f"{topic} has a gap: newest frame {age[worst]:.3f} s old at "
            f"t={grid[worst] - grid[0]:.2f} s into the episode (tolerance {tolerance} s)"
        )
    return pos


@dataclass
class _Episode:
    task: str
    state: np.ndarray
    action: np.ndarray
    picks: dict[str, tuple[str, np.ndarray]]  # key -> (topic, message index per grid point)
    sizes: dict[str, tuple[int, int]]
    report: dict[str, Any]


def _prepare(folder: Path, s: BuildSettings) -> _Episode:
    meta = read_meta(folder)
    cameras = s.cameras or tuple((c["role"], c["topic"]) for c in meta.cameras)
    if not cameras:
        raise BagError("no cameras: the episode lists none and none were given")
    with open_bag(folder, s.typestore) as reader:
        state = read_joint_series(reader, s.state_topic, dict(s.joint_map))
        action = read_joint_series(reader, s.action_topic, dict(s.joint_map))
        refs = {role: (topic, *image_refs(reader, topic)) for role, topic in cameras}
        t0 = max(state.times_s[0], action.times_s[0], *(r[1][0].stamp_s for r in refs.values()))
        t1 = min(state.times_s[-1], action.times_s[-1])
        if meta.end_time_s is not None:
            # The episode is what happened between its start and its stop (ROS time).
            # Messages stamped before the start reach the bag too: they queue in DDS
            # while the recorder opens the bag and are delivered after it.
            overlap = min(t1, meta.end_time_s) - max(t0, meta.start_time_s)
            if overlap * s.fps < 1 <= (t1 - t0) * s.fps:
                raise BagError(
                    f"the streams' header stamps ({t0:.3f} to {t1:.3f} s) lie outside the "
                    f"recording ({meta.start_time_s:.3f} to {meta.end_time_s:.3f} s, the "
                    "recorder's ROS clock): do the publishers stamp with another clock?"
                )
            t0, t1 = max(t0, meta.start_time_s), min(t1, meta.end_time_s)
        n = int(np.floor((t1 - t0) * s.fps + 1e-9)) + 1
        if t1 <= t0 or n < 2:
            raise BagError(f"the streams overlap for {max(0.0, t1 - t0):.2f} s only")
        grid = t0 + np.arange(n) / s.fps
        state_rows, state_err = _sample(state, grid, s.state_tolerance_s)
        action_rows, action_err = _sample(action, grid, s.state_tolerance_s)
        picks: dict[str, tuple[str, np.ndarray]] = {}
        sizes: dict[str, tuple[int, int]] = {}
        ages = []
        for role, (topic, frame_refs, _zero) in refs.items():
            ordered = sorted(frame_refs, key=lambda r: r.stamp_s)
            stamps = np.array([r.stamp_s for r in ordered])
            pos = _pick_frames(stamps, grid, s.image_tolerance_s, topic)
            ages.append(float((grid - stamps[pos]).max()))
            message_index = np.array([ordered[p].index for p in pos])
            key = f"observation.images.{role}"
            picks[key] = (topic, message_index)
            _i, first = next(iter_images(reader, topic, {int(message_index[0])}))
            sizes[key] = first.shape[:2]
    notes = state.notes + action.notes
    return _Episode(
        meta.instruction,
        state_rows,
        action_rows,
        picks,
        sizes,
        {
            "source": folder.name,
            "frames": n,
            "grid_start_s": float(t0),  # ROS time of frame 0 (frame k: + k / fps)
            "duration_s": (n - 1) / s.fps,
            "state_sync_ms": 1e3 * max(state_err, action_err),
            "image_age_ms": 1e3 * max(ages),
            "notes": notes,
        },
    )


def _frames(folder: Path, s: BuildSettings, topic: str, picks: np.ndarray) -> Iterator[np.ndarray]:
    wanted = {int(i) for i in picks}
    with open_bag(folder, s.typestore) as reader:
        decoded = dict(iter_images(reader, topic, wanted))
    for i in picks:
        yield decoded[int(i)]


def build_dataset(episodes_dir: str | Path, out_dir: str | Path, s: BuildSettings) -> BuildReport:
    check_output_folder(Path(out_dir))  # before minutes of work, not after
    folders = list_episodes(episodes_dir)
    if not folders:
        raise EpisodeError(f"no episodes in {episodes_dir}")
    report = BuildReport(str(out_dir))
    prepared: list[tuple[Path, _Episode]] = []
    for folder in folders:
        try:
            meta = read_meta(folder)
            if needs_recovery(folder):
                raise BagError("its recorder died; run `dream-vla dataset recover` first")
            if s.include == "success" and meta.success is not True:
                report.skipped.append(
                    {"episode": folder.name, "reason": f"not successful (success={meta.success})"}
                )
                continue
            prepared.append((folder, _prepare(folder, s)))
        except (BagError, EpisodeError) as exc:
            report.skipped.append({"episode": folder.name, "reason": str(exc)})
    if not prepared:
        reasons = "; ".join(f"{x['episode']}: {x['reason']}" for x in report.skipped)
        raise EpisodeError(f"no usable episode in {episodes_dir} ({reasons})")
    keys = sorted(prepared[0][1].sizes)
    sizes = prepared[0][1].sizes
    for folder, ep in prepared:
        if sorted(ep.sizes) != keys or ep.sizes != sizes:
            raise EpisodeError(
                f"{folder.name} has cameras {ep.sizes}, the first episode {sizes}: "
                "all episodes of a dataset need the same cameras and image sizes"
            )
    cams = [CameraSpec(k, sizes[k][0], sizes[k][1]) for k in keys]
    writer = LeRobotWriter(out_dir, s.fps, cams, JOINT_NAMES, codec=s.codec)
    for folder, ep in prepared:
        images = {k: _frames(folder, s, topic, picks) for k, (topic, picks) in ep.picks.items()}
        writer.add_episode(ep.task, ep.state, ep.action, images)
        report.episodes.append(ep.report)
        report.total_frames += len(ep.state)
    writer.finish()
    report.codec = writer.used_codec
    (Path(out_dir) / "meta" / "build_report.json").write_text(json.dumps(report.__dict__, indent=2))
    return report
