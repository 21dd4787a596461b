"""The arm interface every backend implements (docs/architecture.md §5). SI units only."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np


class ArmError(RuntimeError):
    """The arm cannot do what was asked; the message names the problem and a fix."""


@dataclass(frozen=True)
class ArmState:
    """One reading of the arm, in the controller's joint order (6 joints + gripper)."""

    positions: np.ndarray  # (7,) rad, gripper opening in m
    velocities: np.ndarray  # (7,) rad/s, gripper m/s
    stamp_s: float  # wall-clock time of the newest joint feedback frame
    enabled: bool  # every arm motor reports enabled
    faults: tuple[str, ...] = field(default_factory=tuple)  # empty when healthy
    # the gripper's reported effort [N*m]: non-zero while it squeezes an object
    gripper_effort_nm: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.faults


@runtime_checkable
class Arm(Protocol):
    def connect(self) -> None:
        """Open the bus and wait for the first feedback; raise ArmError if none comes."""

    def enable(self) -> None:
        """Enable all motors (handshake with timeout); raise ArmError on failure."""

    def disable(self) -> None:
        """Disable the motors."""

    def read_state(self) -> ArmState:
        """The newest feedback, with any fault decoded into words."""

    def command(self, positions: np.ndarray) -> None:
        """Send absolute joint targets (7,) in SI units. Callers pass limited commands only."""

    def emergency_stop(self) -> None:
        """Stop now (firmware quick stop)."""

    def resume(self) -> None:
        """Leave the firmware emergency stop."""

    def close(self) -> None:
        """Release the bus."""
