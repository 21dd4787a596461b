"""Dream-VLA in plain PyTorch (no ROS): presets, architecture, action decoding, checkpoints.

The names below load their module on first use, so that a light submodule (the
official layout's constants, the configuration) does not import torch and
transformers: the `dream-vla` command answers a usage error in a fraction of a
second instead of the several it takes to import them."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_HOMES = {
    "ActionDecoder": "actions",
    "ActionTokenizer": "actions",
    "DecodeSettings": "actions",
    "CheckpointError": "checkpoint",
    "NormStats": "checkpoint",
    "load_checkpoint": "checkpoint",
    "save_checkpoint": "checkpoint",
    "DreamVLAConfig": "config",
    "ModelConfigError": "config",
    "preset": "config",
    "DreamVLA": "modeling",
}

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

if TYPE_CHECKING:
    from dream_vla_ros.model.actions import ActionDecoder, ActionTokenizer, DecodeSettings
    from dream_vla_ros.model.checkpoint import (
        CheckpointError,
        NormStats,
        load_checkpoint,
        save_checkpoint,
    )
    from dream_vla_ros.model.config import DreamVLAConfig, ModelConfigError, preset
    from dream_vla_ros.model.modeling import DreamVLA


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value
