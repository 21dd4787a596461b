"""Bag replay timing (no ROS imports): which message goes out when.

`dream-vla play` (dream_vla_ros.ros.player) publishes the serialized messages
this yields, and `/clock` = the bag time of the moment, so nodes started with
`use_sim_time:=true` see the recorded time line. Bag time is the recording's
receive time (rosbag2 log time); the header stamps inside the messages are
untouched, so they line up with `/clock`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dream_vla_ros.data.bags import BagError, open_bag


@dataclass(frozen=True)
class PlaySettings:
    rate: float = 1.0
    start_offset_s: float = 0.0
    loop: bool = False
    topics: tuple[str, ...] = ()  # empty: every topic
    exclude: tuple[str, ...] = ()
    typestore: str = "ros2_kilted"

    def __post_init__(self) -> None:
        if not 0.01 <= self.rate <= 100.0:
            raise ValueError(f"rate must be in 0.01..100, got {self.rate}")
        if self.start_offset_s < 0:
            raise ValueError(f"start offset must be >= 0 s, got {self.start_offset_s}")


@dataclass(frozen=True)
class Topic:
    name: str
    msgtype: str


@dataclass(frozen=True)
class Item:
    offset_s: float  # wall seconds after the start of this pass (already divided by rate)
    bag_time_ns: int
    topic: str
    data: bytes


def bag_topics(path: str | Path, s: PlaySettings) -> tuple[list[Topic], int, int]:
    """The topics that will be played, and the bag's start/end time [ns]."""
    with open_bag(path, s.typestore) as reader:
        have = {c.topic: c.msgtype for c in reader.connections}
        unknown = [t for t in s.topics if t not in have]
        if unknown:
            raise BagError(
                f"topics {unknown} are not in the bag; it has: {', '.join(sorted(have))}"
            )
        chosen = [
            Topic(t, have[t])
            for t in sorted(have)
            if (not s.topics or t in s.topics) and t not in s.exclude
        ]
        if not chosen:
            raise BagError("no topic left to play after the filters")
        return chosen, int(reader.start_time), int(reader.end_time)


def schedule(path: str | Path, s: PlaySettings) -> Iterator[Item]:
    """One pass over the bag from `start_offset_s`, in bag-time order."""
    topics, start_ns, _end = bag_topics(path, s)
    names = {t.name for t in topics}
    first_ns = start_ns + int(s.start_offset_s * 1e9)
    with open_bag(path, s.typestore) as reader:
        conns: Sequence[Any] = [c for c in reader.connections if c.topic in names]
        try:
            for conn, log_ns, raw in reader.messages(connections=conns, start=first_ns):
                yield Item((log_ns - first_ns) * 1e-9 / s.rate, log_ns, conn.topic, bytes(raw))
        except BagError:
            raise
        except Exception as exc:
            raise BagError(f"cannot read {path}: {type(exc).__name__}: {exc}") from None
