"""LeRobot datasets: write v3.0, read v3.0 and v2.1 (no ROS imports; no lerobot dependency).

Format facts (from the LeRobot project's documentation and code; the layout is
written here from those facts):

v3.0::

    meta/info.json        codebase_version "v3.0", fps, features, path templates
    meta/stats.json       per feature: min/max/mean/std/count/q01/q99
    meta/tasks.parquet    index "task" (the instruction), column task_index
    meta/episodes/chunk-000/file-000.parquet
                          episode_index, tasks, length, dataset_from_index,
                          dataset_to_index, data/{chunk,file}_index,
                          videos/{key}/{chunk_index,file_index,from_timestamp,to_timestamp}
    data/chunk-000/file-000.parquet
                          observation.state, action, timestamp, frame_index,
                          episode_index, index, task_index
    videos/{key}/chunk-{c:03d}/file-{f:03d}.mp4

One episode column is this project's own: `clock_start_s`, the episode clock at the
episode's first frame (0 for an episode recorded from its start; a continuation that
takes over another controller's rollout, evaluation/dagger.py, starts at the moment
it took over). Readers that do not know it ignore it; a dataset without it reads 0.

v2.1: one parquet and one video per episode
(`data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet`,
`videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4`),
`meta/episodes.jsonl`, `meta/tasks.jsonl`, `meta/episodes_stats.jsonl`.

This writer puts every frame row in one data file and one video file per
episode and camera (file index = episode index): valid v3.0, simple to append.

Writer and reader share this module (longer than most) so that the format facts
are written down once.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dream_vla_ros.data.video import VideoError, VideoWriter, frames_at, read_video

CHUNKS_SIZE = 1000
STATE, ACTION = "observation.state", "action"


class DatasetError(ValueError):
    """A dataset folder cannot be read or written; the message says which file and why."""


def feature_stats(values: np.ndarray) -> dict[str, Any]:
    """min/max/mean/std/q01/q99/count over axis 0 of (N, D) values."""
    v = np.asarray(values, dtype=np.float64)
    return {
        "min": v.min(0).tolist(),
        "max": v.max(0).tolist(),
        "mean": v.mean(0).tolist(),
        "std": v.std(0).tolist(),
        "q01": np.quantile(v, 0.01, axis=0).tolist(),
        "q99": np.quantile(v, 0.99, axis=0).tolist(),
        "count": [int(v.shape[0])],
    }


def image_stats(samples: np.ndarray) -> dict[str, Any]:
    """Per-channel stats of (N, H, W, 3) uint8 frames in [0, 1], shaped (3, 1, 1) like LeRobot."""
    pixels = samples.reshape(-1, 3).astype(np.float64) / 255.0
    flat = feature_stats(pixels)
    out: dict[str, Any] = {k: [[[x]] for x in v] for k, v in flat.items() if k != "count"}
    out["count"] = [int(samples.shape[0])]
    return out


@dataclass
class CameraSpec:
    key: str  # e.g. observation.images.front
    height: int
    width: int


def check_output_folder(root: Path) -> None:
    """A dataset is written into a new or empty folder, never over anything."""
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise DatasetError(f"output folder {root} exists and is not empty")


class LeRobotWriter:
    """Builds a v3.0 dataset one episode at a time; `finish()` writes the metadata."""

    def __init__(
        self,
        root: str | Path,
        fps: int,
        cameras: Sequence[CameraSpec],
        names: Sequence[str],
        robot_type: str = "piper",
        codec: str = "",
    ) -> None:
        self.root = Path(root)
        check_output_folder(self.root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.fps = int(fps)
        self.cameras = list(cameras)
        self.names = list(names)
        self.robot_type = robot_type
        self.codec = codec
        self.tasks: dict[str, int] = {}
        self.rows: dict[str, list[np.ndarray]] = {
            k: []
            for k in (STATE, ACTION, "timestamp", "frame_index", "episode_index", "task_index")
        }
        self.episodes: list[dict[str, Any]] = []
        self.image_samples: dict[str, list[np.ndarray]] = {c.key: [] for c in self.cameras}
        self.total = 0
        self.used_codec = ""

    def add_episode(
        self,
        task: str,
        state: np.ndarray,
        action: np.ndarray,
        images: dict[str, Iterable[np.ndarray]],
        clock_start_s: float = 0.0,
    ) -> int:
        """One episode: its rows, and its frames encoded into one video per camera.
        `clock_start_s`: the episode clock at its first frame (module docstring)."""

        def encode(cam: CameraSpec, path: Path, n: int) -> None:
            writer = VideoWriter(path, self.fps, cam.width, cam.height, self.codec)
            self.used_codec = writer.codec
            count = 0
            try:
                for frame in images[cam.key]:
                    writer.add(frame)
                    if count % 5 == 0:
                        # a copy: the view would keep the whole frame alive (10 MB an episode)
                        self.image_samples[cam.key].append(frame[::4, ::4].copy())
                    count += 1
            finally:
                writer.close()
            if count != n:
                raise DatasetError(f"{cam.key}: {count} frames for {n} rows")

        return self._add(task, state, action, encode, clock_start_s)

    def add_encoded_episode(
        self,
        task: str,
        state: np.ndarray,
        action: np.ndarray,
        videos: dict[str, Path],
        clock_start_s: float = 0.0,
    ) -> int:
        """One episode whose videos exist already (one file per camera, the episode's
        frames from its start): the files are copied, not re-encoded."""

        def copy(cam: CameraSpec, path: Path, _n: int) -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(videos[cam.key], path)

        return self._add(task, state, action, copy, clock_start_s)

    def _add(
        self, task: str, state: np.ndarray, action: np.ndarray, video, clock_start_s: float
    ) -> int:
        n = len(state)
        if n == 0 or len(action) != n:
            raise DatasetError(
                f"an episode needs equal, non-zero rows: {n} state, {len(action)} action"
            )
        if not (np.isfinite(clock_start_s) and clock_start_s >= 0):
            raise DatasetError(f"an episode's clock_start_s must be >= 0 s, got {clock_start_s}")
        index = len(self.episodes)
        task_index = self.tasks.setdefault(task, len(self.tasks))
        episode: dict[str, Any] = {
            "episode_index": index,
            "tasks": [task],
            "length": n,
            "dataset_from_index": self.total,
            "dataset_to_index": self.total + n,
            "data/chunk_index": 0,
            "data/file_index": 0,
            "meta/episodes/chunk_index": 0,
            "meta/episodes/file_index": 0,
            "clock_start_s": float(clock_start_s),
        }
        for cam in self.cameras:
            chunk, file = divmod(index, CHUNKS_SIZE)
            video(cam, self.root / f"videos/{cam.key}/chunk-{chunk:03d}/file-{file:03d}.mp4", n)
            episode.update(
                {
                    f"videos/{cam.key}/chunk_index": chunk,
                    f"videos/{cam.key}/file_index": file,
                    f"videos/{cam.key}/from_timestamp": 0.0,
                    f"videos/{cam.key}/to_timestamp": n / self.fps,
                }
            )
        for key, values in ((STATE, state), (ACTION, action)):
            for stat, value in feature_stats(values).items():
                episode[f"stats/{key}/{stat}"] = value
        self.rows[STATE].append(np.asarray(state, np.float32))
        self.rows[ACTION].append(np.asarray(action, np.float32))
        self.rows["timestamp"].append(np.arange(n, dtype=np.float32) / self.fps)
        self.rows["frame_index"].append(np.arange(n, dtype=np.int64))
        self.rows["episode_index"].append(np.full(n, index, np.int64))
        self.rows["task_index"].append(np.full(n, task_index, np.int64))
        self.episodes.append(episode)
        self.total += n
        return index

    def finish(self, image_stats_of: dict[str, Any] | None = None) -> dict[str, Any]:
        """Write the frame table and the metadata. A camera's stats come from the
        frames encoded here, or from `image_stats_of[key]` (copied videos)."""
        import pandas as pd
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self.episodes:
            raise DatasetError("no episode was added; nothing to write")
        d = len(self.names)
        cols = {k: np.concatenate(v) for k, v in self.rows.items()}
        table = pa.table(
            {
                STATE: pa.FixedSizeListArray.from_arrays(pa.array(cols[STATE].ravel()), d),
                ACTION: pa.FixedSizeListArray.from_arrays(pa.array(cols[ACTION].ravel()), d),
                "timestamp": cols["timestamp"],
                "frame_index": cols["frame_index"],
                "episode_index": cols["episode_index"],
                "index": np.arange(self.total, dtype=np.int64),
                "task_index": cols["task_index"],
            }
        )
        data_path = self.root / "data/chunk-000/file-000.parquet"
        data_path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, data_path)
        episodes_path = self.root / "meta/episodes/chunk-000/file-000.parquet"
        episodes_path.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(self.episodes).to_parquet(episodes_path, index=False)
        tasks = pd.DataFrame(
            {"task_index": list(self.tasks.values())}, index=pd.Index(list(self.tasks), name="task")
        )
        tasks.to_parquet(self.root / "meta/tasks.parquet")

        stats: dict[str, Any] = {
            STATE: feature_stats(cols[STATE]),
            ACTION: feature_stats(cols[ACTION]),
        }
        for key in ("timestamp", "frame_index", "episode_index", "index", "task_index"):
            values = np.arange(self.total) if key == "index" else cols[key]
            stats[key] = feature_stats(np.asarray(values, np.float64)[:, None])
        for cam in self.cameras:
            given = (image_stats_of or {}).get(cam.key)
            if given or self.image_samples[cam.key]:
                stats[cam.key] = given or image_stats(np.stack(self.image_samples[cam.key]))
        features: dict[str, Any] = {
            STATE: {"dtype": "float32", "shape": [d], "names": self.names},
            ACTION: {"dtype": "float32", "shape": [d], "names": self.names},
        }
        for cam in self.cameras:
            features[cam.key] = {
                "dtype": "video",
                "shape": [cam.height, cam.width, 3],
                "names": ["height", "width", "channels"],
                "info": {
                    "video.height": cam.height,
                    "video.width": cam.width,
                    "video.codec": {"libsvtav1": "av1", "libx264": "h264"}.get(
                        self.used_codec, self.used_codec
                    ),
                    "video.pix_fmt": "yuv420p",
                    "video.is_depth_map": False,
                    "video.fps": self.fps,
                    "video.channels": 3,
                    "has_audio": False,
                },
            }
        for key, dtype in (
            ("timestamp", "float32"),
            ("frame_index", "int64"),
            ("episode_index", "int64"),
            ("index", "int64"),
            ("task_index", "int64"),
        ):
            features[key] = {"dtype": dtype, "shape": [1], "names": None}
        info = {
            "codebase_version": "v3.0",
            "robot_type": self.robot_type,
            "total_episodes": len(self.episodes),
            "total_frames": self.total,
            "total_tasks": len(self.tasks),
            "chunks_size": CHUNKS_SIZE,
            "data_files_size_in_mb": 100,
            "video_files_size_in_mb": 200,
            "fps": self.fps,
            "splits": {"train": f"0:{len(self.episodes)}"},
            "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
            "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4",
            "features": features,
        }
        (self.root / "meta/info.json").write_text(json.dumps(info, indent=2))
        (self.root / "meta/stats.json").write_text(json.dumps(stats, indent=2))
        return info


# ---------------------------------------------------------------------------- reading


@dataclass
class EpisodeInfo:
    index: int
    length: int
    task: str
    from_index: int  # rows [from_index, to_index) of the frame table
    to_index: int
    videos: dict[str, tuple[Path, float]] = field(default_factory=dict)  # key -> (file, start s)
    clock_start_s: float = 0.0  # the episode clock at its first frame (module docstring)


def _column(table: Any, name: str) -> np.ndarray:
    col = table.column(name).combine_chunks()
    if hasattr(col, "flatten") and hasattr(col.type, "value_type"):  # (fixed size) list column
        width = len(col[0]) if len(col) else 0
        return np.asarray(col.flatten().to_numpy(zero_copy_only=False)).reshape(len(col), width)
    return np.asarray(col.to_numpy(zero_copy_only=False))


def _clock_start(row: dict[str, Any]) -> float:
    """An episode's `clock_start_s`; 0 where the dataset has none."""
    value = row.get("clock_start_s")
    if value is None or not np.isfinite(value):
        return 0.0
    if value < 0:
        raise DatasetError(f"episode {row.get('episode_index')}: clock_start_s {value} < 0")
    return float(value)


class LeRobotDataset:
    """Frames, tasks, stats and camera frames of a local LeRobot v2.1 or v3.0 dataset."""

    def __init__(self, root: str | Path, action_key: str = ACTION, state_key: str = STATE) -> None:
        """`action_key` and `state_key` name the dataset's action and joint-state
        columns when they are not LeRobot's usual `action` / `observation.state`
        (a recipe's data.action_key, data.state_key)."""
        import pyarrow.parquet as pq

        self.root = Path(root)
        info_path = self.root / "meta/info.json"
        try:
            self.info = json.loads(info_path.read_text())
        except FileNotFoundError:
            raise DatasetError(
                f"{self.root} is not a LeRobot dataset (no meta/info.json)"
            ) from None
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{info_path} is not valid JSON: {exc}") from None
        self.version = str(self.info.get("codebase_version", ""))
        if self.version not in ("v2.1", "v3.0"):
            raise DatasetError(
                f"{self.root}: codebase_version '{self.version}' is not supported (v2.1, v3.0)"
            )
        self.fps = int(self.info["fps"])
        self.features: dict[str, Any] = self.info["features"]
        self.camera_keys = [k for k, f in self.features.items() if f.get("dtype") == "video"]
        if any(f.get("dtype") == "image" for f in self.features.values()):
            raise DatasetError(f"{self.root}: image (PNG) features are not supported, only video")
        numeric = [k for k, f in self.features.items() if f.get("dtype") not in ("video", "image")]
        if action_key not in self.features:
            raise DatasetError(
                f"{self.root}: no action column '{action_key}'; its columns are {numeric} "
                "(name the action column with data.action_key, e.g. data.action_key=actions)"
            )
        self.action_key = action_key
        self.state_key = state_key if state_key in self.features else ""
        self.numeric_keys = numeric
        self.names = list((self.features.get(action_key) or {}).get("names") or [])
        self._pq = pq
        if self.version == "v3.0":
            self._load_v3()
        else:
            self._load_v21()
        self.stats = self._load_stats()

    # -- v3.0 ---------------------------------------------------------------
    def _load_v3(self) -> None:
        import pandas as pd

        tasks = pd.read_parquet(self.root / "meta/tasks.parquet")
        if "task" in tasks.columns:
            tasks = tasks.set_index("task")
        self.tasks = {int(i): str(t) for t, i in zip(tasks.index, tasks["task_index"])}
        files = sorted((self.root / "meta/episodes").rglob("*.parquet"))
        if not files:
            raise DatasetError(f"{self.root}: no meta/episodes/*.parquet")
        frame = pd.concat([pd.read_parquet(f) for f in files]).sort_values("episode_index")
        self.episodes = []
        template = self.info["video_path"]
        for row in frame.to_dict("records"):
            videos = {}
            for key in self.camera_keys:
                path = self.root / template.format(
                    video_key=key,
                    chunk_index=int(row[f"videos/{key}/chunk_index"]),
                    file_index=int(row[f"videos/{key}/file_index"]),
                )
                videos[key] = (path, float(row[f"videos/{key}/from_timestamp"]))
            self.episodes.append(
                EpisodeInfo(
                    int(row["episode_index"]),
                    int(row["length"]),
                    str(next(iter(row["tasks"]))),
                    int(row["dataset_from_index"]),
                    int(row["dataset_to_index"]),
                    videos,
                    _clock_start(row),
                )
            )
        data_files = sorted((self.root / "data").rglob("*.parquet"))
        self._table = self._read_tables(data_files)

    # -- v2.1 ---------------------------------------------------------------
    def _load_v21(self) -> None:
        def jsonl(name: str) -> list[dict[str, Any]]:
            path = self.root / "meta" / name
            try:
                return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            except FileNotFoundError:
                raise DatasetError(f"{self.root}: missing meta/{name}") from None

        self.tasks = {int(t["task_index"]): str(t["task"]) for t in jsonl("tasks.jsonl")}
        chunks = int(self.info.get("chunks_size", CHUNKS_SIZE))
        tables, self.episodes = [], []
        start = 0
        for ep in sorted(jsonl("episodes.jsonl"), key=lambda e: e["episode_index"]):
            index = int(ep["episode_index"])
            chunk = index // chunks
            path = self.root / self.info["data_path"].format(
                episode_chunk=chunk, episode_index=index
            )
            table = self._read_tables([path])
            n = table.num_rows
            videos = {
                key: (
                    self.root
                    / self.info["video_path"].format(
                        episode_chunk=chunk, video_key=key, episode_index=index
                    ),
                    0.0,
                )
                for key in self.camera_keys
            }
            self.episodes.append(
                EpisodeInfo(
                    index, n, str(ep["tasks"][0]), start, start + n, videos, _clock_start(ep)
                )
            )
            tables.append(table)
            start += n
        import pyarrow as pa

        self._table = pa.concat_tables(tables)

    def _read_tables(self, paths: list[Path]) -> Any:
        import pyarrow as pa

        if not paths:
            raise DatasetError(f"{self.root}: no data parquet files")
        try:
            return pa.concat_tables([self._pq.read_table(p) for p in paths])
        except (OSError, pa.ArrowInvalid) as exc:
            raise DatasetError(f"{self.root}: cannot read data parquet: {exc}") from None

    def _load_stats(self) -> dict[str, Any]:
        path = self.root / "meta/stats.json"
        if path.is_file():
            return json.loads(path.read_text())
        state = self.frames(None)
        stats = {self.action_key: feature_stats(state["action"])}
        if "state" in state:
            stats[STATE] = feature_stats(state["state"])
        return stats

    # -- access -------------------------------------------------------------
    def frames(self, episode: EpisodeInfo | None) -> dict[str, np.ndarray]:
        """Numeric columns of one episode (all episodes for None): state, action, timestamp, ..."""
        table = self._table
        if episode is not None:
            table = table.slice(episode.from_index, episode.length)
        out = {
            "action": _column(table, self.action_key),
            "timestamp": _column(table, "timestamp").astype(np.float64),
            "frame_index": _column(table, "frame_index"),
            "task_index": _column(table, "task_index"),
        }
        if self.state_key:
            out["state"] = _column(table, self.state_key)
        return out

    def images(self, episode: EpisodeInfo, key: str) -> np.ndarray:
        """(length, H, W, 3) uint8 RGB frames of one camera, matched by timestamp."""
        if key not in episode.videos:
            raise DatasetError(f"no camera '{key}'; the dataset has {self.camera_keys}")
        path, start = episode.videos[key]
        wanted = start + self.frames(episode)["timestamp"]
        try:
            times, frames = read_video(path)
            return frames_at(times, frames, wanted, tolerance_s=0.5 / self.fps)
        except VideoError as exc:
            raise DatasetError(f"episode {episode.index}, {key}: {exc}") from None
