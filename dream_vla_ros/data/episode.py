"""Episodes on disk: one rosbag2 MCAP bag plus `episode.json` per episode (no ROS imports).

Layout of a recording folder::

    EPISODES_DIR/
      episode_000000/
        episode.json      metadata, rewritten atomically (write + rename)
        bag/              rosbag2 folder: metadata.yaml + bag.mcap
      episode_000001/ ...

`episode.json` is written when the episode starts (status "recording") and
again when it ends ("finished"), so a folder whose status is still
"recording" belongs to a recorder that died. `recover_episode` turns such a
folder into a readable bag holding every chunk that reached the disk (the
recorder closes an MCAP chunk and flushes it every `flush_period_s`).
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dream_vla_ros.data.mcap_scan import McapScanError, scan

EPISODE_FILE = "episode.json"
BAG_DIR = "bag"
FORMAT_VERSION = 1
# The recorder's ~/start refusals that pass once the graph is up (a topic without a
# publisher yet, a stream that has not delivered yet): a caller retries these.
WAIT_FOR_STREAMS = ("no publisher seen", "no message on")


class EpisodeError(RuntimeError):
    """Recording cannot go on; the message says why and what was kept."""


@dataclass
class EpisodeMeta:
    index: int
    instruction: str
    status: str = "recording"  # recording | finished | interrupted | recovered
    success: bool | None = None
    start_time_s: float = 0.0  # ROS clock, first message or start call
    end_time_s: float | None = None
    wall_start: str = ""
    topics: dict[str, str] = field(default_factory=dict)  # topic -> type
    message_counts: dict[str, int] = field(default_factory=dict)
    dropped_messages: int = 0
    robot: dict[str, Any] = field(default_factory=dict)
    cameras: list[dict[str, Any]] = field(default_factory=list)
    note: str = ""
    format_version: int = FORMAT_VERSION

    @property
    def duration_s(self) -> float:
        return 0.0 if self.end_time_s is None else self.end_time_s - self.start_time_s


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_meta(folder: Path) -> EpisodeMeta:
    path = folder / EPISODE_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise EpisodeError(f"{folder} is not an episode folder (no {EPISODE_FILE})") from None
    except json.JSONDecodeError as exc:
        raise EpisodeError(f"{path} is not valid JSON: {exc}") from None
    known = set(EpisodeMeta.__dataclass_fields__)
    return EpisodeMeta(**{k: v for k, v in data.items() if k in known})


def list_episodes(root: str | Path) -> list[Path]:
    """Episode folders under `root`, in index order."""
    root = Path(root)
    if not root.is_dir():
        raise EpisodeError(f"episodes folder {root} does not exist")
    return sorted(p for p in root.iterdir() if p.is_dir() and (p / EPISODE_FILE).is_file())


def next_index(root: Path) -> int:
    indices = []
    for p in root.glob("episode_*"):
        try:
            indices.append(int(p.name.split("_")[-1]))
        except ValueError:
            continue
    return max(indices, default=-1) + 1


def free_disk_mb(path: Path) -> float:
    return shutil.disk_usage(path).free / 1e6


def _typestore(name: str = "ros2_kilted"):
    from dream_vla_ros.data.bags import BagError, load_typestore

    try:
        return load_typestore(name)
    except BagError as exc:
        raise EpisodeError(str(exc)) from None


class EpisodeWriter:
    """Writes one episode: serialized (CDR) messages in, an MCAP bag out.

    `write()` only queues (safe from any thread, never blocks the caller); a
    writer thread owns the bag, closes an MCAP chunk and flushes it to the OS
    every `flush_period_s`, so a SIGKILL loses at most that much. A full queue
    drops the message and counts it.
    """

    def __init__(
        self,
        root: str | Path,
        topics: dict[str, str],
        instruction: str,
        start_time_s: float | Callable[[], float],
        robot: dict[str, Any] | None = None,
        cameras: Sequence[dict[str, Any]] = (),
        flush_period_s: float = 0.5,
        queue_size: int = 2000,
        typestore: str = "ros2_kilted",
    ) -> None:
        from rosbags.rosbag2 import StoragePlugin, Writer

        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        index = next_index(self.root)
        self.folder = self.root / f"episode_{index:06d}"
        self.folder.mkdir()
        self.meta = EpisodeMeta(
            index=index,
            instruction=instruction,
            start_time_s=0.0 if callable(start_time_s) else float(start_time_s),
            wall_start=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            topics=dict(topics),
            message_counts={t: 0 for t in topics},
            robot=dict(robot or {}),
            cameras=[dict(c) for c in cameras],
        )
        store = _typestore(typestore)
        self._writer = Writer(self.folder / BAG_DIR, version=9, storage_plugin=StoragePlugin.MCAP)
        self._writer.open()
        self._connections = {}
        try:
            for topic, msgtype in topics.items():
                if msgtype not in store.fielddefs:
                    raise EpisodeError(f"type {msgtype} of {topic} is not in the type store")
                self._connections[topic] = self._writer.add_connection(
                    topic, msgtype, typestore=store
                )
        except Exception:
            self._writer.abort()
            shutil.rmtree(self.folder, ignore_errors=True)
            raise
        if callable(start_time_s):
            # a clock: the episode starts now that the bag is open (opening it and
            # registering the types can take most of a second on a busy host)
            self.meta.start_time_s = float(start_time_s())
        write_json_atomic(self.folder / EPISODE_FILE, asdict(self.meta))
        self._queue: queue.Queue[tuple[str, bytes, int] | None] = queue.Queue(queue_size)
        self._flush_period = flush_period_s
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="episode-writer", daemon=True)
        self._thread.start()

    # -- producer side -------------------------------------------------------
    def write(self, topic: str, data: bytes, time_ns: int) -> bool:
        """Queue one serialized message; False when it was dropped."""
        try:
            self._queue.put_nowait((topic, data, time_ns))
            return True
        except queue.Full:
            self.meta.dropped_messages += 1
            return False

    @property
    def error(self) -> BaseException | None:
        return self._error

    # -- writer thread -------------------------------------------------------
    def _flush(self) -> None:
        storage = self._writer.storage
        if storage is None:
            return
        # rosbags' MCAP storage keeps the open chunk in memory until it is 1 MiB;
        # closing it here bounds what a crash can lose to one flush period.
        close_chunk = getattr(storage, "close_chunk", None)
        chunk = getattr(storage, "chunk", None)
        if close_chunk is not None and chunk is not None and chunk.bio.tell():
            close_chunk()
        bio = getattr(storage, "bio", None)
        if bio is not None:
            bio.flush()

    def _run(self) -> None:
        next_flush = time.monotonic() + self._flush_period
        while True:
            timeout = max(0.0, next_flush - time.monotonic())
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                item = ()  # type: ignore[assignment]
            try:
                if item is None:
                    return
                if item:
                    topic, data, time_ns = item
                    self._writer.write(self._connections[topic], time_ns, data)
                    self.meta.message_counts[topic] += 1
                if time.monotonic() >= next_flush:
                    self._flush()
                    next_flush = time.monotonic() + self._flush_period
            except BaseException as exc:  # disk full, I/O error: stop writing, keep what is there
                self._error = exc
                return

    # -- end of the episode --------------------------------------------------
    def close(self, status: str, success: bool | None, end_time_s: float, note: str = "") -> Path:
        """Drain the queue, close the bag (metadata.yaml), write the final episode.json."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        self._writer.close()
        self.meta.status = status
        self.meta.success = success
        self.meta.end_time_s = end_time_s
        if self._error is not None:
            note = (note + "; " if note else "") + f"writer error: {self._error}"
        self.meta.note = note
        write_json_atomic(self.folder / EPISODE_FILE, asdict(self.meta))
        return self.folder

    def discard(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        self._writer.abort()
        shutil.rmtree(self.folder, ignore_errors=True)


def needs_recovery(folder: Path) -> bool:
    meta = read_meta(folder)
    return meta.status == "recording" or not (folder / BAG_DIR / "metadata.yaml").is_file()


def recover_episode(folder: str | Path, typestore: str = "ros2_kilted") -> EpisodeMeta:
    """Rebuild a readable bag from an episode whose recorder died.

    Every message in a complete MCAP chunk is kept; the cut-off tail is
    reported in the episode's note. The original file is kept as
    `bag.partial/` beside the rebuilt `bag/`.
    """
    from rosbags.rosbag2 import StoragePlugin, Writer

    folder = Path(folder)
    meta = read_meta(folder)
    bag = folder / BAG_DIR
    files = sorted(bag.glob("*.mcap"))
    if not files:
        raise EpisodeError(f"{folder}: no .mcap file to recover in {bag}")
    try:
        result = scan(files[0])
    except McapScanError as exc:
        raise EpisodeError(f"{folder}: cannot recover: {exc}") from None
    store = _typestore(typestore)
    rebuilt = folder / (BAG_DIR + ".rebuilt")
    shutil.rmtree(rebuilt, ignore_errors=True)
    writer = Writer(rebuilt, version=9, storage_plugin=StoragePlugin.MCAP)
    writer.open()
    connections = {}
    counts: dict[str, int] = {}
    last_ns = int(meta.start_time_s * 1e9)
    for channel in result.channels.values():
        schema = result.schemas.get(channel.schema_id)
        if schema is None:
            continue
        if schema.name in store.fielddefs:
            conn = writer.add_connection(channel.topic, schema.name, typestore=store)
        else:
            raise EpisodeError(f"{folder}: type {schema.name} of {channel.topic} is unknown")
        connections[channel.id] = conn
        counts[channel.topic] = 0
    for msg in result.messages:
        target = connections.get(msg.channel_id)
        if target is None:
            continue
        writer.write(target, msg.log_time_ns, msg.data)
        counts[target.topic] += 1
        last_ns = max(last_ns, msg.log_time_ns)
    writer.close()
    partial = folder / (BAG_DIR + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    os.replace(bag, partial)
    os.replace(rebuilt, bag)
    meta.status = "recovered"
    meta.end_time_s = last_ns * 1e-9
    meta.message_counts = {t: counts.get(t, 0) for t in set(meta.topics) | set(counts)}
    cut = (
        f"cut off at byte {result.truncated_at}"
        if result.truncated_at is not None
        else "file ended without a footer"
    )
    meta.note = (
        f"recovered after the recorder died: {len(result.messages)} messages kept, "
        f"{cut}; original in {partial.name}/"
    )
    write_json_atomic(folder / EPISODE_FILE, asdict(meta))
    return meta
