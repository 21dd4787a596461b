"""Training-time augmentation of a sample's camera frames (no ROS imports): a random
resized crop with colour jitter, and colour swaps that permute the channels and the
instruction's colour words together (docs/finetune.md). finetune/data.py draws them
from a generator seeded per sample and epoch."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from dream_vla_ros.finetune.recipe import AugmentConfig


def swap_colours(
    images: torch.Tensor, task: str, words: Sequence[str], g: torch.Generator
) -> tuple[torch.Tensor, str]:
    """(cameras, 3, S, S) images with their channels permuted at random (the same way
    for every camera) and `task` with the channels' colour words swapped to match.

    New channel c shows old channel perm[c], so what was called words[perm[c]] is
    now called words[c]. Whole words only, case kept for the first letter."""
    perm = torch.randperm(3, generator=g)
    if bool((perm == torch.arange(3)).all()):
        return images, task
    rename = {words[int(perm[c])].lower(): words[c] for c in range(3)}

    def replace(match: re.Match[str]) -> str:
        word = rename[match.group(0).lower()]
        return word.capitalize() if match.group(0)[0].isupper() else word.lower()

    pattern = r"\b(" + "|".join(re.escape(w) for w in rename) + r")\b"
    return images[:, perm], re.sub(pattern, replace, task, flags=re.IGNORECASE)


def augment_frame(frame: torch.Tensor, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """(3, S, S) uint8 -> augmented (3, S, S) uint8: random resized crop, then colour jitter."""
    _, s, _ = frame.shape

    def uniform(low: float, high: float) -> float:
        return low + (high - low) * float(torch.rand((), generator=g))

    lo, hi = cfg.crop_scale
    if lo < 1.0:
        side = max(2, min(s, round(s * math.sqrt(uniform(lo, hi)))))
        top = int(torch.randint(0, s - side + 1, (), generator=g))
        left = int(torch.randint(0, s - side + 1, (), generator=g))
        crop = frame[:, top : top + side, left : left + side]
        if side != s:
            frame = F.interpolate(crop[None], size=(s, s), mode="bicubic", antialias=True)[0]
    x = frame.float()
    gray_weights = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)
    if cfg.brightness > 0:
        x = x * uniform(1 - cfg.brightness, 1 + cfg.brightness)
    if cfg.contrast > 0:
        mean = (x * gray_weights).sum(0).mean()
        x = (x - mean) * uniform(1 - cfg.contrast, 1 + cfg.contrast) + mean
    if cfg.saturation > 0:
        gray = (x * gray_weights).sum(0, keepdim=True)
        x = (x - gray) * uniform(1 - cfg.saturation, 1 + cfg.saturation) + gray
    return x.round().clamp(0, 255).to(torch.uint8)
