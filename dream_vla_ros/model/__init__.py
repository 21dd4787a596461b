"""Dream-VLA in plain PyTorch (no ROS): presets, architecture, action decoding, checkpoints."""

from dream_vla_ros.model.actions import ActionDecoder, ActionTokenizer, DecodeSettings
from dream_vla_ros.model.checkpoint import (
    CheckpointError,
    NormStats,
    load_checkpoint,
    save_checkpoint,
)
from dream_vla_ros.model.config import DreamVLAConfig, ModelConfigError, preset
from dream_vla_ros.model.modeling import DreamVLA

__all__ = [
    "ActionDecoder",
    "ActionTokenizer",
    "CheckpointError",
    "DecodeSettings",
    "DreamVLA",
    "DreamVLAConfig",
    "ModelConfigError",
    "NormStats",
    "load_checkpoint",
    "preset",
    "save_checkpoint",
]
