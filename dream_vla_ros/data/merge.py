"""`dream-vla dataset merge SOURCE... OUT`: several LeRobot v3.0 datasets into one,
episodes in the order given, without re-encoding a frame (no ROS imports).

The sources must have the same rate, columns (names and shapes) and cameras, and
keep each episode's frames in a video file of its own, from its start: the layout
`dream-vla dataset build` and `dream-vla sim collect --offline` write. Rows and
state/action statistics are rebuilt; the video files are copied; the cameras'
pixel statistics (which training does not read) are pooled from the sources':
counts add, means and variances combine exactly, min/max are the extremes and
q01/q99 the count-weighted means of the sources' (an approximation).
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dream_vla_ros.data.lerobot import (
    CameraSpec,
    DatasetError,
    LeRobotDataset,
    LeRobotWriter,
    check_output_folder,
)


def _signature(ds: LeRobotDataset) -> dict[str, Any]:
    return {
        k: (f.get("dtype"), list(f.get("shape") or []), f.get("names"))
        for k, f in ds.features.items()
    }


def _check(ds: LeRobotDataset, first: LeRobotDataset) -> None:
    if ds.version != "v3.0":
        raise DatasetError(f"{ds.root} is a {ds.version} dataset; only v3.0 datasets merge")
    if not ds.state_key:
        raise DatasetError(f"{ds.root} has no observation.state column; it cannot be merged")
    if ds.fps != first.fps or _signature(ds) != _signature(first):
        raise DatasetError(
            f"{ds.root} differs from {first.root} in its rate, columns or cameras; only "
            "datasets recorded alike merge"
        )
    seen: set[Path] = set()
    for ep in ds.episodes:
        for key, (path, start) in ep.videos.items():
            if start != 0.0 or path in seen:
                raise DatasetError(
                    f"{ds.root}: episode {ep.index} shares the video file of {key} with "
                    "other episodes; only datasets with a video per episode merge (rebuild "
                    "it with dream-vla dataset build)"
                )
            seen.add(path)


def pool_stats(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Statistics of the union from the statistics of disjoint parts (see the module
    docstring); any array shape, `count` a one-element list."""
    counts = np.array([float(p["count"][0]) for p in parts])
    w = counts / counts.sum()

    def arr(key: str) -> np.ndarray:
        return np.stack([np.asarray(p[key], dtype=np.float64) for p in parts])

    def weighted(values: np.ndarray) -> np.ndarray:
        return np.tensordot(w, values, axes=1)

    means = arr("mean")
    mean = weighted(means)
    var = weighted(arr("std") ** 2 + (means - mean) ** 2)
    return {
        "min": arr("min").min(0).tolist(),
        "max": arr("max").max(0).tolist(),
        "mean": mean.tolist(),
        "std": np.sqrt(var).tolist(),
        "q01": weighted(arr("q01")).tolist(),
        "q99": weighted(arr("q99")).tolist(),
        "count": [int(counts.sum())],
    }


def merge_datasets(sources: Sequence[str | Path], out: str | Path, log=print) -> dict[str, Any]:
    """Write the episodes of every source, in order, into the new dataset `out`.
    Returns its info.json."""
    out = Path(out)
    check_output_folder(out)
    if len(sources) < 2:
        raise DatasetError(f"merge needs two or more datasets, got {len(sources)}")
    datasets = [LeRobotDataset(s) for s in sources]
    first = datasets[0]
    for ds in datasets:
        _check(ds, first)
    cams = [CameraSpec(k, *first.features[k]["shape"][:2]) for k in first.camera_keys]
    writer = LeRobotWriter(out, first.fps, cams, first.names)
    writer.used_codec = str(first.features[first.camera_keys[0]]["info"]["video.codec"])
    try:
        for ds in datasets:
            for ep in ds.episodes:
                cols = ds.frames(ep)
                videos = {key: ep.videos[key][0] for key in first.camera_keys}
                writer.add_encoded_episode(
                    ep.task, cols["state"], cols["action"], videos, ep.clock_start_s
                )
            log(f"merge: {len(ds.episodes)} episodes from {ds.root}")
        pixels = {
            k: pool_stats([ds.stats[k] for ds in datasets])
            for k in first.camera_keys
            if all(k in ds.stats for ds in datasets)
        }
        return writer.finish(image_stats_of=pixels)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)  # no half dataset behind
        raise
