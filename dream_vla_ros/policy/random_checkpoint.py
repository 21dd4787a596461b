"""Write a randomly initialised checkpoint (model, byte tokenizer, norm stats) in
the published layout: the stand-in for downloaded weights in tests, the CPU demo
and benchmarks. Its actions are meaningless but well-formed."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from dream_vla_ros.control import load_safety_config
from dream_vla_ros.model.checkpoint import NormStats, save_checkpoint
from dream_vla_ros.model.config import preset
from dream_vla_ros.model.modeling import DreamVLA
from dream_vla_ros.policy.prompt import byte_tokenizer


def write_random_checkpoint(
    path: str | Path,
    preset_name: str = "tiny",
    seed: int = 0,
    action_box: tuple[Sequence[float], Sequence[float]] | None = None,
    image_size: int = 224,
    **action: object,
) -> Path:
    """`action_box` = (centre, half_width) per action dimension confines the
    random policy's actions to a box (the demo keeps it near the home pose);
    default: the PiPER's soft limits, so every decoded action is in range. The
    proprio bounds: the soft limits for a 7-value state, 0-3 s for the episode clock
    (`clock_input=True`)."""
    cfg = replace(preset(preset_name, **action), image_size=image_size)
    torch.manual_seed(seed)
    model = DreamVLA(cfg).eval()
    limits = load_safety_config()
    lower, upper = np.asarray(limits.soft_lower), np.asarray(limits.soft_upper)
    bounds = [(lower, upper)] if cfg.action.state_dim == 7 else []
    if cfg.action.clock_input:
        bounds.append((np.zeros(1), np.full(1, 3.0)))
    proprio = None
    if bounds and sum(lo.size for lo, _ in bounds) == cfg.action.proprio_dim:
        proprio = NormStats(*(np.concatenate(b) for b in zip(*bounds, strict=True)))
    if action_box is not None:
        centre, half = (np.asarray(v, dtype=np.float64) for v in action_box)
        if centre.shape != lower.shape or half.shape != lower.shape or np.any(half < 0):
            raise ValueError(f"action_box needs {lower.size} centres and half widths >= 0")
        lower = np.maximum(lower, centre - half)
        upper = np.minimum(upper, centre + half)
        if np.any(upper < lower):
            raise ValueError("action_box lies outside the soft limits")
    out = save_checkpoint(model, path, NormStats(lower, upper), proprio)
    first = cfg.newline_token_id + 1  # after the special tokens of the tiny presets
    if first + 256 > cfg.base_vocab_size:
        raise ValueError("the text vocabulary is too small for the byte tokenizer")
    byte_tokenizer(first).save(str(Path(out) / "tokenizer.json"))
    return out
