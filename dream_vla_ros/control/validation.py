"""Action-chunk validation: a chunk is accepted whole or rejected with a reason.

A chunk is what one policy inference produced: absolute joint targets for the
times `stamp + time_from_start[k]`, where `stamp` is the capture time of the
observation it was predicted from (docs/architecture.md §2).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from dream_vla_ros.control.config import SafetyConfig


class ChunkRejected(Exception):
    """Raised for a chunk that must not reach the arm. `reason` is a short counter key."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class TimedChunk:
    """A validated chunk: absolute target times and positions in the controller's
    joint order (the policy's output is `dream_vla_ros.policy.ActionChunk`)."""

    stamp_s: float  # observation capture time on the ROS clock
    times_s: np.ndarray  # (H,) absolute target times, strictly increasing
    positions: np.ndarray  # (H, J) absolute targets, SI units


def validate_chunk(
    joint_names: Sequence[str],
    stamp_s: float,
    time_from_start_s: Sequence[float],
    points: Sequence[Sequence[float]],
    now_s: float,
    cfg: SafetyConfig,
    reference: np.ndarray | None = None,
) -> TimedChunk:
    """Check every rule of docs/architecture.md §4.1 and return the chunk in canonical order.

    `reference` is the current command (J,); when given, the first target that is
    still in the future may not jump further than `max_start_jump_rad` from it.
    """
    names = list(joint_names)
    expected = cfg.joint_names
    if not points:
        raise ChunkRejected("empty", "the chunk has no points")
    if len(points) > cfg.chunk_max_points:
        raise ChunkRejected(
            "too_long", f"{len(points)} points exceed the maximum of {cfg.chunk_max_points}"
        )
    if len(set(names)) != len(names):
        raise ChunkRejected("duplicate_joint", f"joint_names has duplicates: {names}")
    unknown = [n for n in names if n not in expected]
    if unknown:
        raise ChunkRejected("unknown_joint", f"unknown joint names {unknown}")
    missing = [n for n in expected if n not in names]
    if missing:
        raise ChunkRejected("missing_joint", f"missing joint names {missing}")
    if len(time_from_start_s) != len(points):
        raise ChunkRejected(
            "size_mismatch", f"{len(points)} points but {len(time_from_start_s)} times"
        )
    for k, point in enumerate(points):
        if len(point) != len(names):
            raise ChunkRejected(
                "size_mismatch",
                f"point {k} has {len(point)} positions for {len(names)} joint names",
            )

    if not math.isfinite(stamp_s) or stamp_s <= 0.0:
        raise ChunkRejected("bad_stamp", f"header stamp {stamp_s} is zero or not finite")
    age = now_s - stamp_s
    if age > cfg.chunk_max_age_s:
        raise ChunkRejected("stale", f"stamp is {age:.3f} s old (maximum {cfg.chunk_max_age_s} s)")
    if -age > cfg.chunk_max_future_s:
        raise ChunkRejected(
            "future", f"stamp is {-age:.3f} s in the future (tolerance {cfg.chunk_max_future_s} s)"
        )

    offsets = np.asarray(time_from_start_s, dtype=np.float64)  # (H,)
    order = [names.index(n) for n in expected]
    positions = np.asarray(points, dtype=np.float64)[:, order]  # (H, J)
    if not np.all(np.isfinite(offsets)):
        raise ChunkRejected("non_finite", "time_from_start contains NaN or Inf")
    if not np.all(np.isfinite(positions)):
        bad = sorted({expected[j] for j in np.argwhere(~np.isfinite(positions))[:, 1]})
        raise ChunkRejected("non_finite", f"positions of {bad} contain NaN or Inf")
    if offsets[0] <= 0.0 or np.any(np.diff(offsets) <= 0.0):
        raise ChunkRejected(
            "bad_timing", "time_from_start must be positive and strictly increasing"
        )
    if offsets[-1] > cfg.chunk_max_horizon_s:
        raise ChunkRejected(
            "bad_timing",
            f"horizon {offsets[-1]:.3f} s exceeds the maximum of {cfg.chunk_max_horizon_s} s",
        )

    tol = np.asarray(cfg.out_of_range_tolerance)
    below = positions < cfg.lower - tol
    above = positions > cfg.upper + tol
    if np.any(below | above):
        j = int(np.argwhere(below | above)[0, 1])
        worst = positions[:, j].min() if below[:, j].any() else positions[:, j].max()
        raise ChunkRejected(
            "out_of_range",
            f"{expected[j]} target {worst:.4f} is outside "
            f"[{cfg.position_lower[j]}, {cfg.position_upper[j]}]",
        )

    times = stamp_s + offsets  # (H,)
    future = times > now_s
    if not np.any(future):
        raise ChunkRejected("expired", "every point of the chunk is already in the past")
    if reference is not None:
        first = positions[int(np.argmax(future))]
        jump = np.abs(first - reference) * cfg.arm_joint_mask
        if np.max(jump) > cfg.max_start_jump_rad:
            j = int(np.argmax(jump))
            raise ChunkRejected(
                "jump",
                f"{expected[j]} would jump {jump[j]:.3f} rad from the current command "
                f"(maximum {cfg.max_start_jump_rad} rad)",
            )
    times.setflags(write=False)
    positions.setflags(write=False)
    return TimedChunk(stamp_s=stamp_s, times_s=times, positions=positions)
