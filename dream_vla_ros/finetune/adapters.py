"""Which parameters train: LoRA through peft (adapters on every linear layer of the
backbone, projector and, unless frozen, the vision tower; heads fully trained) or
full finetuning. One rule for both: the action head, the noisy-action projector
and the proprio projector always train in full; `lm_head` and the token
embeddings matter only to the discrete head (they carry the action tokens), so
with another head they stay frozen and DDP never sees an unused trainable
parameter.
"""

from __future__ import annotations

from torch import nn

from dream_vla_ros.finetune.recipe import LoraSettings
from dream_vla_ros.model.modeling import DreamVLA

HEAD_MODULES = ("action_head", "noisy_action_projector", "proprio_projector")

_BACKBONE = r"model\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
_PROJECTOR = r"projector\.linear_[12]"
_VISION = r"visual\.(blocks\.\d+\.(attn\.(qkv|proj)|mlp\.fc[12])|merger\.mlp\.[02])"
_DISCRETE = r"lm_head|model\.embed_tokens"


def lora_targets(head: str, freeze_vision: bool) -> str:
    """peft `target_modules` regex (full match on module names)."""
    parts = [_BACKBONE, _PROJECTOR]
    if not freeze_vision:
        parts.append(_VISION)
    if head == "discrete":
        parts.append(_DISCRETE)
    return "^(" + "|".join(parts) + ")$"


def head_modules(model: DreamVLA) -> dict[str, nn.Module]:
    return {n: m for n in HEAD_MODULES if (m := getattr(model, n, None)) is not None}


def apply_lora(model: DreamVLA, settings: LoraSettings, freeze_vision: bool) -> nn.Module:
    """Inject LoRA adapters in place; returns the peft wrapper (for saving and merging).
    Afterwards only the adapters and the heads require gradients."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=lora_targets(model.cfg.action.head, freeze_vision),
        bias="none",
    )
    peft_model = get_peft_model(model, config)
    for module in head_modules(model).values():
        module.requires_grad_(True)
    return peft_model


def set_full_finetuning(model: DreamVLA, freeze_vision: bool) -> None:
    model.requires_grad_(True)
    if freeze_vision:
        model.visual.requires_grad_(False)
    if model.cfg.action.head != "discrete":
        model.lm_head.requires_grad_(False)
    # the rotary tables are buffers; nothing else to freeze


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}
