"""The policy core (no ROS): preprocessing, prompt, `Policy.infer(observation) -> ActionChunk`."""

from dream_vla_ros.policy.policy import (
    ActionChunk,
    Observation,
    ObservationError,
    Policy,
    PolicySettings,
)
from dream_vla_ros.policy.preprocess import ImagePreprocessor
from dream_vla_ros.policy.random_checkpoint import write_random_checkpoint

__all__ = [
    "ActionChunk",
    "ImagePreprocessor",
    "Observation",
    "ObservationError",
    "Policy",
    "PolicySettings",
    "write_random_checkpoint",
]
