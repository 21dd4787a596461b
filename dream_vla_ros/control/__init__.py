"""Chunk timing, interpolation, splicing and the safety limits. No ROS imports."""

from dream_vla_ros.control.config import (
    ARM_JOINTS,
    GRIPPER,
    JOINT_NAMES,
    ConfigError,
    SafetyConfig,
    load_safety_config,
)
from dream_vla_ros.control.controller import ChunkController, Mode
from dream_vla_ros.control.safety import FilteredCommand, SafetyFilter, TrackingFault
from dream_vla_ros.control.validation import ChunkRejected, TimedChunk, validate_chunk

__all__ = [
    "ARM_JOINTS",
    "GRIPPER",
    "JOINT_NAMES",
    "ChunkController",
    "ChunkRejected",
    "ConfigError",
    "FilteredCommand",
    "Mode",
    "SafetyConfig",
    "SafetyFilter",
    "TimedChunk",
    "TrackingFault",
    "load_safety_config",
    "validate_chunk",
]
