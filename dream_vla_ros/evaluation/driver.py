"""What the closed-loop tools need from a running graph, without ROS.

`evaluation/` drives a graph that the launcher started through this interface;
its one implementation is `dream_vla_ros.ros.client.GraphClient` (an rclpy node in
the tool's own process), which the tools receive as a factory so that nothing here
imports rclpy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

CONTROLLER_STATUS = "dream_vla/controller"
POLICY_STATUS = "dream_vla/policy"


class GraphError(RuntimeError):
    """The graph did not do what the driver needs; the message says what and where."""


class GraphDriver(Protocol):
    """A client of a running graph: measured joints, diagnostics, parameters, services."""

    on_state: Callable[[float, np.ndarray], None] | None  # called with each joint state
    on_objects: Callable[[dict], None] | None  # ... with each /sim_world/objects report

    def watch(self, front_topic: str = ...) -> None: ...
    def measured(self) -> np.ndarray | None: ...
    def status(self, name: str) -> dict[str, str]: ...
    def diagnostics_count(self, name: str) -> int: ...
    def now(self) -> float: ...
    def wait(
        self, predicate: Callable[[], bool], timeout_s: float, what: str | Callable[[], str]
    ) -> None: ...
    def set_param(self, node: str, name: str, value: bool | int | str) -> None: ...
    def trigger(self, service: str, check: bool = True) -> tuple[bool, str]: ...
    def send_chunk(self, stamp_s: float, positions: np.ndarray, period_s: float) -> None: ...
    def send_instruction(self, text: str) -> None: ...
    def record_frames(self, limit: int) -> None: ...
    def take_frames(self) -> list[np.ndarray]: ...
    def close(self) -> None: ...


Connect = Callable[[str], GraphDriver]  # node name -> a connected client


def controller_mode(client: GraphDriver) -> str:
    return client.status(CONTROLLER_STATUS).get("mode", "running")


def faulted(client: GraphDriver) -> bool:
    return controller_mode(client) in ("fault", "estop")


def at_pose(client: GraphDriver, pose: Sequence[float] | np.ndarray, tolerance: float) -> bool:
    """The six joints measured within `tolerance` rad of `pose`."""
    q = client.measured()
    target = np.asarray(pose, dtype=float)
    return q is not None and float(np.abs(q[:6] - target[:6]).max()) < tolerance
