"""Write a randomly initialised checkpoint (model, byte tokenizer, norm stats) in
the published layout: the stand-in for downloaded weights in tests, the CPU demo
and benchmarks. Its actions are meaningless but well-formed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from dream_vla_ros.control import load_safety_config
from dream_vla_ros.model.checkpoint import NormStats, save_checkpoint
from dream_vla_ros.model.config import preset
from dream_vla_ros.model.modeling import DreamVLA
from dream_vla_ros.policy.prompt import byte_tokenizer


def write_random_checkpoint(
    path: str | Path, preset_name: str = "tiny", seed: int = 0, **action: object
) -> Path:
    cfg = preset(preset_name, **action)
    torch.manual_seed(seed)
    model = DreamVLA(cfg).eval()
    # norm stats spanning the PiPER's soft limits: every decoded action is in range
    limits = load_safety_config()
    stats = NormStats(np.asarray(limits.soft_lower), np.asarray(limits.soft_upper))
    proprio = stats if cfg.action.proprio_dim == 7 else None
    out = save_checkpoint(model, path, stats, proprio)
    first = cfg.newline_token_id + 1  # after the special tokens of the tiny presets
    if first + 256 > cfg.base_vocab_size:
        raise ValueError("the text vocabulary is too small for the byte tokenizer")
    byte_tokenizer(first).save(str(Path(out) / "tokenizer.json"))
    return out
