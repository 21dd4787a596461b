"""Decoded training frames on disk (`data.frame_cache`), memory-mapped and reused by
later runs on the same dataset (no ROS imports).

A dataset's frames live in a folder of their own under the cache root, named by a
hash of the dataset's path, its meta/info.json (text and modification time) and
what the decoding depends on (cameras, input size, centre crop): a rebuilt dataset
or other settings get a new folder. One `.npy` file an episode, (n, cameras, 3, S,
S) uint8, written atomically, so a run killed while writing leaves no half file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from dream_vla_ros.data.lerobot import DatasetError


class FrameCache:
    def __init__(self, root: str | Path, dataset: Path, settings: list) -> None:
        info = dataset / "meta" / "info.json"
        key = json.dumps(
            [
                str(dataset.resolve()),
                info.stat().st_mtime_ns if info.is_file() else 0,
                info.read_text() if info.is_file() else "",
                *settings,
            ]
        )
        self.dir = Path(root) / hashlib.sha1(key.encode()).hexdigest()[:16]
        self.dir.mkdir(parents=True, exist_ok=True)

    def check_room(self, what: str, needed_gb: float) -> None:
        """DatasetError in one sentence when `needed_gb` would not fit beside what
        the folder holds already."""
        free_gb = shutil.disk_usage(self.dir).free / 1e9
        held_gb = sum(f.stat().st_size for f in self.dir.glob("*.npy")) / 1e9
        if needed_gb > free_gb + held_gb:
            raise DatasetError(
                f"{what} needs {needed_gb:.1f} GB, {free_gb:.1f} GB are free in {self.dir} "
                "(data.frame_cache)"
            )

    def frames(
        self, index: int, shape: tuple[int, ...], decode: Callable[[], np.ndarray]
    ) -> np.ndarray:
        """Episode `index`'s frames, memory-mapped: from the cache, or `decode()`d
        and written there first."""
        file = self.dir / f"episode_{index:06d}.npy"
        if file.is_file():
            cached = np.load(file, mmap_mode="r")
            if cached.shape == shape and cached.dtype == np.uint8:
                return cached
        tmp = file.with_name(file.name + ".tmp")
        with open(tmp, "wb") as f:
            np.save(f, decode())
        os.replace(tmp, file)
        return np.load(file, mmap_mode="r")
