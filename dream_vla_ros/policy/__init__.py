"""The policy core (no ROS): preprocessing, prompt, `Policy.infer(observation) -> ActionChunk`,
the observation buffer and the inference loop of the policy node.

Names are imported lazily, so that light modules (observations, runner) can be
used without importing torch (the controller process never loads it).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ActionChunk": "dream_vla_ros.policy.policy",
    "Observation": "dream_vla_ros.policy.policy",
    "ObservationError": "dream_vla_ros.policy.policy",
    "Policy": "dream_vla_ros.policy.policy",
    "PolicySettings": "dream_vla_ros.policy.policy",
    "ImagePreprocessor": "dream_vla_ros.policy.preprocess",
    "write_random_checkpoint": "dream_vla_ros.policy.random_checkpoint",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'dream_vla_ros.policy' has no attribute '{name}'")
