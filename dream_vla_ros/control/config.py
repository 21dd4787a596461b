"""The safety envelope of the arm, loaded from YAML into frozen, validated dataclasses.

All numbers live in config/piper.yaml; nothing here hard-codes a limit. A bad
file fails with one sentence that names the file, the key and the fix.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from dream_vla_ros.control.errors import ConfigError
from dream_vla_ros.control.kinematics import DHChain
from dream_vla_ros.control.workspace import Workspace, load_workspace
from dream_vla_ros.paths import config_path

ARM_JOINTS: tuple[str, ...] = ("joint1", "joint2", "joint3", "joint4", "joint5", "joint6")
GRIPPER = "gripper"
JOINT_NAMES: tuple[str, ...] = (*ARM_JOINTS, GRIPPER)


def _vec(values: tuple[float, ...]) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    arr.setflags(write=False)
    return arr


@dataclass(frozen=True)
class SafetyConfig:
    """Everything the controller enforces, per joint in `joint_names` order (SI units)."""

    joint_names: tuple[str, ...]
    position_lower: tuple[float, ...]
    position_upper: tuple[float, ...]
    soft_margin: tuple[float, ...]
    max_velocity: tuple[float, ...]
    max_acceleration: tuple[float, ...]
    firmware_max_velocity_rad_s: float
    firmware_max_acceleration_rad_s2: float
    max_tracking_error_rad: float
    chunk_max_age_s: float
    chunk_max_future_s: float
    chunk_max_points: int
    chunk_max_horizon_s: float
    out_of_range_tolerance: tuple[float, ...]
    max_start_jump_rad: float
    chunk_timeout_s: float
    # the floor under the tool point (config `workspace:`; None: joint limits only)
    workspace: Workspace | None = None

    def __post_init__(self) -> None:
        n = len(self.joint_names)
        if len(set(self.joint_names)) != n:
            raise ConfigError(f"joint_names has duplicates: {list(self.joint_names)}")
        for field in (
            "position_lower",
            "position_upper",
            "soft_margin",
            "max_velocity",
            "max_acceleration",
            "out_of_range_tolerance",
        ):
            values = getattr(self, field)
            if len(values) != n:
                raise ConfigError(f"{field} has {len(values)} values for {n} joints")
            if not all(math.isfinite(v) for v in values):
                raise ConfigError(f"{field} must be finite numbers, got {list(values)}")
        for name, lo, hi, margin in zip(
            self.joint_names, self.position_lower, self.position_upper, self.soft_margin
        ):
            if not lo < hi:
                raise ConfigError(f"position limit of {name} is empty: [{lo}, {hi}]")
            if margin < 0 or 2 * margin >= hi - lo:
                raise ConfigError(
                    f"soft limit margin {margin} of {name} must be >= 0 and leave a range "
                    f"inside [{lo}, {hi}]"
                )
        for name, vmax, amax in zip(self.joint_names, self.max_velocity, self.max_acceleration):
            if vmax <= 0 or amax <= 0:
                raise ConfigError(
                    f"max_velocity and max_acceleration of {name} must be > 0, got {vmax}, {amax}"
                )
            if name != GRIPPER and vmax > self.firmware_max_velocity_rad_s:
                raise ConfigError(
                    f"max_velocity of {name} ({vmax} rad/s) exceeds the firmware ceiling "
                    f"{self.firmware_max_velocity_rad_s} rad/s"
                )
            if name != GRIPPER and amax > self.firmware_max_acceleration_rad_s2:
                raise ConfigError(
                    f"max_acceleration of {name} ({amax} rad/s^2) exceeds the firmware ceiling "
                    f"{self.firmware_max_acceleration_rad_s2} rad/s^2"
                )
        positive = {
            "max_tracking_error_rad": self.max_tracking_error_rad,
            "chunk_max_age_s": self.chunk_max_age_s,
            "chunk_max_future_s": self.chunk_max_future_s,
            "chunk_max_points": self.chunk_max_points,
            "chunk_max_horizon_s": self.chunk_max_horizon_s,
            "max_start_jump_rad": self.max_start_jump_rad,
            "chunk_timeout_s": self.chunk_timeout_s,
        }
        for key, value in positive.items():
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ConfigError(f"{key} must be a positive number, got {value!r}")

    # Arrays for the numeric core (read-only views, built once per access site).
    @property
    def lower(self) -> np.ndarray:
        return _vec(self.position_lower)

    @property
    def upper(self) -> np.ndarray:
        return _vec(self.position_upper)

    @property
    def soft_lower(self) -> np.ndarray:
        return _vec(tuple(lo + m for lo, m in zip(self.position_lower, self.soft_margin)))

    @property
    def soft_upper(self) -> np.ndarray:
        return _vec(tuple(hi - m for hi, m in zip(self.position_upper, self.soft_margin)))

    @property
    def vmax(self) -> np.ndarray:
        return _vec(self.max_velocity)

    @property
    def amax(self) -> np.ndarray:
        return _vec(self.max_acceleration)

    @property
    def arm_joint_mask(self) -> np.ndarray:
        """True for arm joints (tracking-checked), False for the gripper."""
        mask = np.array([name != GRIPPER for name in self.joint_names])
        mask.setflags(write=False)
        return mask


def _per_joint(section: Mapping[str, Any], key: str, names: tuple[str, ...], src: Path) -> list:
    table = section.get(key)
    if not isinstance(table, Mapping):
        raise ConfigError(f"{src}: '{key}' must be a mapping from joint name to value")
    missing = [n for n in names if n not in table]
    unknown = [n for n in table if n not in names]
    if missing or unknown:
        raise ConfigError(
            f"{src}: '{key}' must list exactly the joints {list(names)} "
            f"(missing {missing}, unknown {unknown})"
        )
    return [table[n] for n in names]


def _split(section: Mapping[str, Any], key: str, names: tuple[str, ...], src: Path) -> list:
    value = section.get(key)
    if not isinstance(value, Mapping) or set(value) != {"joints_rad", "gripper_m"}:
        raise ConfigError(f"{src}: '{key}' must be {{joints_rad: X, gripper_m: Y}}")
    return [float(value["gripper_m"] if n == GRIPPER else value["joints_rad"]) for n in names]


def _number(section: Mapping[str, Any], key: str, src: Path) -> float:
    value = section.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{src}: '{key}' must be a number, got {value!r}")
    return float(value)


def load_safety_config(path: str | Path | None = None) -> SafetyConfig:
    """Load config/piper.yaml (or `path`) into a validated SafetyConfig."""
    src = Path(path) if path else config_path("piper.yaml")
    try:
        doc = yaml.safe_load(src.read_text())
    except FileNotFoundError:
        raise ConfigError(f"limits file {src} does not exist; pass an existing YAML file") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"limits file {src} is not valid YAML: {yaml_problem(exc)}") from None
    if not isinstance(doc, Mapping) or not all(k in doc for k in ("arm", "controller", "chunks")):
        raise ConfigError(f"{src}: expected top-level sections 'arm', 'controller' and 'chunks'")
    arm, ctrl, chunks = doc["arm"], doc["controller"], doc["chunks"]
    names = tuple(arm.get("joint_names", ()))
    if names != JOINT_NAMES:
        raise ConfigError(f"{src}: arm.joint_names must be {list(JOINT_NAMES)}, got {list(names)}")
    limits = _per_joint(arm, "position_limits", names, src)
    for name, pair in zip(names, limits):
        if not (isinstance(pair, list | tuple) and len(pair) == 2):
            raise ConfigError(f"{src}: position_limits.{name} must be [lower, upper]")
    workspace = _workspace(doc, src)
    try:
        return SafetyConfig(
            joint_names=names,
            position_lower=tuple(float(p[0]) for p in limits),
            position_upper=tuple(float(p[1]) for p in limits),
            soft_margin=tuple(_split(ctrl, "soft_limit_margin", names, src)),
            max_velocity=tuple(float(v) for v in _per_joint(ctrl, "max_velocity", names, src)),
            max_acceleration=tuple(
                float(v) for v in _per_joint(ctrl, "max_acceleration", names, src)
            ),
            firmware_max_velocity_rad_s=_number(arm, "firmware_max_velocity_rad_s", src),
            firmware_max_acceleration_rad_s2=_number(arm, "firmware_max_acceleration_rad_s2", src),
            max_tracking_error_rad=_number(ctrl, "max_tracking_error_rad", src),
            chunk_max_age_s=_number(chunks, "max_age_s", src),
            chunk_max_future_s=_number(chunks, "max_future_s", src),
            chunk_max_points=int(_number(chunks, "max_points", src)),
            chunk_max_horizon_s=_number(chunks, "max_horizon_s", src),
            out_of_range_tolerance=tuple(_split(chunks, "out_of_range_tolerance", names, src)),
            max_start_jump_rad=_number(chunks, "max_start_jump_rad", src),
            chunk_timeout_s=_number(chunks, "timeout_s", src),
            workspace=workspace,
        )
    except ConfigError as exc:
        raise ConfigError(f"{src}: {exc}") from None


def _workspace(doc: Mapping[str, Any], src: Path) -> Workspace | None:
    if "workspace" not in doc:
        return None
    chain = DHChain.load(src)  # its errors name the file
    try:
        return load_workspace(doc["workspace"], chain)
    except ConfigError as exc:
        raise ConfigError(f"{src}: {exc}") from None


def yaml_problem(exc: Exception) -> str:
    """A YAML error in one line: what and where (line, column)."""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"{problem}{where}"
