"""Reading rosbag2 bags (MCAP or sqlite3) through `rosbags`, with one clear error per problem.

Real bags are messy; what this module does about it:

- missing path, no metadata.yaml, unreadable or truncated storage: `BagError`
  naming the bag and what to do (an episode folder whose recorder died:
  `dream-vla dataset recover`);
- message definitions: taken from the bag when it carries them (MCAP, newer
  sqlite3); otherwise from the type store named by `typestore`
  (ros2_humble, ros2_jazzy, ros2_kilted, ...);
- a missing topic: `BagError` listing the topics the bag has;
- `JointState` with an empty `name[]`: read in the canonical joint order when
  it has exactly 7 (or 6 + gripper) positions, otherwise an error;
- different joint names on different topics: a `joint_map` renames them
  (e.g. `{"joint_1": "joint1"}`); names still missing are an error;
- zero header stamps: the bag's receive time is used instead, and counted.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dream_vla_ros.control import JOINT_NAMES


class BagError(ValueError):
    """A bag cannot be used; the message names the bag and the problem."""


@dataclass
class Series:
    """Joint-space samples of one topic in canonical order, sorted by time."""

    topic: str
    times_s: np.ndarray  # (N,)
    positions: np.ndarray  # (N, 7)
    zero_stamps: int = 0  # samples whose header stamp was zero (receive time used)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ImageRef:
    """Where one image message is: its capture stamp, its bag time, its index on the topic."""

    stamp_s: float
    log_time_ns: int
    index: int


def load_typestore(name: str):
    from rosbags.typesys import Stores, get_typestore

    try:
        return get_typestore(Stores(name))
    except ValueError:
        choices = ", ".join(s.value for s in Stores if s.value.startswith("ros2"))
        raise BagError(f"unknown type store '{name}'; choose one of {choices}") from None


@contextlib.contextmanager
def open_bag(path: str | Path, typestore: str = "ros2_kilted") -> Iterator[Any]:
    """An open `rosbags.highlevel.AnyReader` over one rosbag2 folder (or its .mcap/.db3 file)."""
    from rosbags.highlevel import AnyReader, AnyReaderError

    path = Path(path)
    if path.is_file() and path.suffix in (".mcap", ".db3"):
        path = path.parent
    if not path.exists():
        raise BagError(f"bag {path} does not exist")
    if (path / "bag").is_dir() and (path / "episode.json").is_file():
        path = path / "bag"  # an episode folder
    storage = any(path.glob("*.mcap")) or any(path.glob("*.db3"))
    if not (path / "metadata.yaml").is_file():
        if (path.parent / "episode.json").is_file():
            hint = "; its recorder died before closing it: run `dream-vla dataset recover` on "
            hint += str(path.parent)
        elif storage:
            hint = "; a recorder left it unfinished: rebuild it with `ros2 bag reindex`"
        else:
            hint = ""
        raise BagError(f"{path} is not a rosbag2 folder (no metadata.yaml){hint}")
    try:
        reader = AnyReader([path], default_typestore=load_typestore(typestore))
        reader.open()
    except (AnyReaderError, OSError, ValueError, KeyError, EOFError) as exc:
        text = str(exc) or type(exc).__name__
        if "magic" in text.lower() or isinstance(exc, EOFError):
            fix = (
                f"run `dream-vla dataset recover {path.parent}`"
                if (path.parent / "episode.json").is_file()
                else "copy it again, or rebuild it with `ros2 bag reindex`"
            )
            text += f": the file is truncated or damaged; {fix}"
        raise BagError(f"cannot read bag {path}: {text}") from None
    try:
        yield reader
    finally:
        with contextlib.suppress(Exception):
            reader.close()


def connections(reader: Any, topic: str) -> list[Any]:
    conns = [c for c in reader.connections if c.topic == topic]
    if not conns:
        have = ", ".join(sorted({c.topic for c in reader.connections})) or "none"
        raise BagError(f"topic {topic} is not in the bag; it has: {have}")
    return conns


def _messages(reader: Any, conns: list[Any], what: str) -> Iterator[tuple[int, Any]]:
    try:
        for conn, log_ns, raw in reader.messages(connections=conns):
            yield log_ns, reader.deserialize(raw, conn.msgtype)
    except BagError:
        raise
    except Exception as exc:  # truncated or corrupt storage, bad CDR
        raise BagError(f"cannot read {what}: {type(exc).__name__}: {exc}") from None


def _stamp(header: Any, log_ns: int) -> tuple[float, bool]:
    stamp = header.stamp.sec + header.stamp.nanosec * 1e-9
    if stamp <= 0.0:
        return log_ns * 1e-9, True
    return stamp, False


def read_joint_series(
    reader: Any,
    topic: str,
    joint_map: Mapping[str, str] | None = None,
    names: Sequence[str] = JOINT_NAMES,
) -> Series:
    """Positions of `names` from a sensor_msgs/JointState topic."""
    joint_map = dict(joint_map or {})
    conns = connections(reader, topic)
    msgtype = conns[0].msgtype
    if msgtype != "sensor_msgs/msg/JointState":
        raise BagError(f"{topic} has type {msgtype}, expected sensor_msgs/msg/JointState")
    times: list[float] = []
    rows: list[np.ndarray] = []
    zero = unnamed = 0
    for log_ns, msg in _messages(reader, conns, topic):
        position = np.asarray(msg.position, dtype=np.float64)
        stamp, was_zero = _stamp(msg.header, log_ns)
        zero += was_zero
        msg_names = [joint_map.get(n, n) for n in msg.name]
        if not msg_names:
            if len(position) == len(names):
                row = position
            elif len(position) == len(names) - 1:  # arm without the gripper entry
                row = np.append(position, 0.0)
            else:
                raise BagError(
                    f"{topic}: a message has no joint names and {len(position)} positions; "
                    f"cannot tell which joints they are (expected {len(names)})"
                )
            unnamed += 1
        else:
            if len(msg_names) != len(position):
                raise BagError(
                    f"{topic}: a message has {len(msg_names)} names but {len(position)} positions"
                )
            index = {n: i for i, n in enumerate(msg_names)}
            missing = [n for n in names if n not in index]
            if missing:
                raise BagError(
                    f"{topic}: joints {missing} are missing (the topic has {msg.name}); "
                    "map the names with joint_map (dream-vla dataset build and eval-bag: "
                    "--joint-map BAG_NAME=joint1)"
                )
            row = position[[index[n] for n in names]]
        times.append(stamp)
        rows.append(row)
    if not rows:
        raise BagError(f"topic {topic} has no messages")
    t = np.asarray(times)
    order = np.argsort(t, kind="stable")
    series = Series(topic, t[order], np.stack(rows)[order], zero)
    if zero:
        series.notes.append(f"{topic}: {zero} zero header stamps, used the bag receive time")
    if unnamed:
        series.notes.append(f"{topic}: {unnamed} messages without joint names, canonical order")
    if not np.all(np.isfinite(series.positions)):
        raise BagError(f"{topic}: positions contain NaN or infinity")
    return series


def image_refs(reader: Any, topic: str) -> tuple[list[ImageRef], int]:
    """Capture stamps of every image on `topic` (and how many had zero stamps)."""
    conns = connections(reader, topic)
    kind = conns[0].msgtype
    if kind not in ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage"):
        raise BagError(f"{topic} has type {kind}, not an image")
    refs = []
    zero = 0
    for i, (log_ns, msg) in enumerate(_messages(reader, conns, topic)):
        stamp, was_zero = _stamp(msg.header, log_ns)
        zero += was_zero
        refs.append(ImageRef(stamp, log_ns, i))
    if not refs:
        raise BagError(f"topic {topic} has no messages")
    return refs, zero


def decode_image_message(msg: Any) -> np.ndarray:
    """A rosbags Image/CompressedImage -> (H, W, 3) uint8 RGB."""
    from dream_vla_ros.data.images import ImageDecodeError, decode_compressed, decode_raw

    try:
        if hasattr(msg, "encoding"):
            return decode_raw(msg.height, msg.width, msg.encoding, msg.step, msg.data)
        return decode_compressed(msg.format, msg.data)
    except ImageDecodeError as exc:
        raise BagError(f"bad image: {exc}") from None


def iter_images(reader: Any, topic: str, wanted: set[int]) -> Iterator[tuple[int, np.ndarray]]:
    """(index, RGB image) for the messages of `topic` whose index is in `wanted`, in order."""
    conns = connections(reader, topic)
    for i, (_log_ns, msg) in enumerate(_messages(reader, conns, topic)):
        if i in wanted:
            yield i, decode_image_message(msg)
