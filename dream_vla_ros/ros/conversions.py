"""Message <-> numpy conversions shared by the nodes and tests."""

from __future__ import annotations

import importlib
from collections.abc import Sequence

import numpy as np
from builtin_interfaces.msg import Duration, Time
from sensor_msgs.msg import CompressedImage, Image, JointState
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from dream_vla_ros.data.images import decode_compressed, decode_raw, encode_jpeg, encode_raw
from dream_vla_ros.policy.observations import Frame


def message_class(type_name: str):
    """'sensor_msgs/msg/Image' -> the rclpy message class (ImportError names the package)."""
    package, _, name = type_name.split("/")
    return getattr(importlib.import_module(f"{package}.msg"), name)


def time_to_sec(stamp: Time) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


def sec_to_time(seconds: float) -> Time:
    nanos = int(round(seconds * 1e9))
    return Time(sec=nanos // 1_000_000_000, nanosec=nanos % 1_000_000_000)


def duration_to_sec(duration: Duration) -> float:
    return duration.sec + duration.nanosec * 1e-9


def sec_to_duration(seconds: float) -> Duration:
    nanos = int(round(seconds * 1e9))
    return Duration(sec=nanos // 1_000_000_000, nanosec=nanos % 1_000_000_000)


def joint_state(
    stamp_s: float,
    names: Sequence[str],
    positions: np.ndarray,
    velocities: np.ndarray | None = None,
    efforts: np.ndarray | None = None,
) -> JointState:
    msg = JointState()
    msg.header.stamp = sec_to_time(stamp_s)
    msg.name = list(names)
    msg.position = positions.tolist()
    if velocities is not None:
        msg.velocity = velocities.tolist()
    if efforts is not None:
        msg.effort = efforts.tolist()
    return msg


def chunk_message(
    stamp_s: float, names: Sequence[str], positions: np.ndarray, dt_s: float
) -> JointTrajectory:
    """A chunk (H, J) as docs/architecture.md §3 defines it: point k at (k+1)*dt."""
    msg = JointTrajectory()
    msg.header.stamp = sec_to_time(stamp_s)
    msg.joint_names = list(names)
    for k, row in enumerate(np.asarray(positions, dtype=np.float64)):
        msg.points.append(
            JointTrajectoryPoint(
                positions=row.tolist(), time_from_start=sec_to_duration((k + 1) * dt_s)
            )
        )
    return msg


def chunk_fields(msg: JointTrajectory) -> tuple[list[str], float, list[float], list[list[float]]]:
    """(joint_names, stamp_s, time_from_start_s, points) of a JointTrajectory, unvalidated."""
    return (
        list(msg.joint_names),
        time_to_sec(msg.header.stamp),
        [duration_to_sec(p.time_from_start) for p in msg.points],
        [list(p.positions) for p in msg.points],
    )


def image_frame(msg: Image | CompressedImage, kind: str, received_s: float) -> Frame:
    """A Frame for ObservationBuffer from an Image ('raw') or CompressedImage message.

    Only the stamp is read here (callback thread); decoding is deferred to the
    inference thread through the returned closure."""
    stamp = time_to_sec(msg.header.stamp)
    if kind == "raw":

        def decode() -> np.ndarray:
            return decode_raw(msg.height, msg.width, msg.encoding, msg.step, msg.data)

    else:

        def decode() -> np.ndarray:
            return decode_compressed(msg.format, msg.data)

    return Frame(stamp_s=stamp, received_s=received_s, decode=decode)


def image_message(stamp_s: float, image: np.ndarray, frame_id: str = "camera") -> Image:
    """sensor_msgs/Image (rgb8) of an HxWx3 uint8 array."""
    msg = Image()
    msg.header.stamp = sec_to_time(stamp_s)
    msg.header.frame_id = frame_id
    msg.height, msg.width, msg.encoding, msg.step, msg.data = encode_raw(image)
    return msg


def compressed_message(
    stamp_s: float, image: np.ndarray, frame_id: str = "camera"
) -> CompressedImage:
    """sensor_msgs/CompressedImage (JPEG) of an HxWx3 uint8 array."""
    msg = CompressedImage()
    msg.header.stamp = sec_to_time(stamp_s)
    msg.header.frame_id = frame_id
    msg.format = "jpeg"
    msg.data = encode_jpeg(image)
    return msg
