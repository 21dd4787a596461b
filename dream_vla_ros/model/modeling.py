"""Dream-VLA in PyTorch: Qwen2-VL vision transformer -> Linear-GELU-Linear projector ->
Dream (Qwen2-shaped layers with fully bidirectional attention) -> lm_head and the
action heads.

Parameter names are those of the published checkpoints: `visual.*` (transformers'
Qwen2-VL ViT), `model.*` (embed_tokens, layers.N.{self_attn,mlp,...}, norm),
`projector.linear_1/linear_2`, `lm_head`; action heads and projectors live in
their own files (see checkpoint.py).

Sequence layout for one observation (what the official predict_action builds):

    [proprio] [time] <prompt with image pads> a_1 ... a_A <|im_end|> \\n

The proprio token (when the model has a proprio projector) and the flow time
token (flow head only) are prepended as embeddings. Positions are 1-D,
`attention_mask.cumsum(-1)` as in Dream-VLA (the 3 M-RoPE sections carry the
same index, which is plain 1-D RoPE). Dream is trained with logits shifted by
one position: the output at position p describes the token at p + 1, so the
action token at position p is read from the hidden state at p - 1.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import Qwen2Config
from transformers.activations import ACT2FN
from transformers.models.qwen2.modeling_qwen2 import (
    Qwen2DecoderLayer,
    Qwen2RMSNorm,
    Qwen2RotaryEmbedding,
)
from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLVisionConfig
from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VisionTransformerPretrainedModel
from transformers.vision_utils import get_vision_position_ids

from dream_vla_ros.model.config import DreamVLAConfig
from dream_vla_ros.model.graphs import GraphCache
from dream_vla_ros.model.heads import (
    FlowMatchingActionHead,
    L1RegressionActionHead,
    NoisyActionProjector,
    ProprioProjector,
)


def qwen2_config(cfg: DreamVLAConfig, attn_implementation: str = "sdpa") -> Qwen2Config:
    config = Qwen2Config(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        hidden_act=cfg.hidden_act,
        max_position_embeddings=cfg.max_position_embeddings,
        rms_norm_eps=cfg.rms_norm_eps,
        rope_theta=cfg.rope_theta,
        use_sliding_window=False,
        attention_dropout=0.0,
    )
    config._attn_implementation = attn_implementation
    return config


def vision_config(cfg: DreamVLAConfig, attn_implementation: str = "sdpa") -> Qwen2VLVisionConfig:
    v = cfg.vision
    config = Qwen2VLVisionConfig(
        depth=v.depth,
        embed_dim=v.embed_dim,
        hidden_size=v.hidden_size,
        hidden_act=v.hidden_act,
        mlp_ratio=v.mlp_ratio,
        num_heads=v.num_heads,
        in_channels=v.in_channels,
        patch_size=v.patch_size,
        spatial_merge_size=v.spatial_merge_size,
        temporal_patch_size=v.temporal_patch_size,
    )
    config._attn_implementation = attn_implementation
    return config


class DreamBackbone(nn.Module):
    """Dream: Qwen2 decoder layers run with full (bidirectional) attention."""

    def __init__(self, cfg: DreamVLAConfig, attn_implementation: str = "sdpa") -> None:
        super().__init__()
        qcfg = qwen2_config(cfg, attn_implementation)
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size, cfg.pad_token_id)
        self.layers = nn.ModuleList(
            Qwen2DecoderLayer(qcfg, i) for i in range(cfg.num_hidden_layers)
        )
        for layer in self.layers:
            layer.self_attn.is_causal = False  # Dream attends in both directions
        self.norm = Qwen2RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        self.rotary_emb = Qwen2RotaryEmbedding(qcfg)
        # recompute each layer's activations in the backward pass (training memory)
        self.gradient_checkpointing = False

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        prefix_len: int = 0,
        cache: PrefixCache | None = None,
    ) -> torch.Tensor:
        """(B, S, D) embeddings, optional (B, S) padding mask (1 = real) -> (B, S, D).

        `prefix_len` > 0: block-causal attention, the first `prefix_len` positions do
        not see the others (the prompt-cached flow head). `cache`: record the keys and
        values of these positions (an empty cache), or attend to the recorded prefix
        too and continue its positions (a filled one; nothing is appended)."""
        b, s, _ = inputs_embeds.shape
        start = cache.length if cache is not None and cache.filled else 0
        if attention_mask is None:
            position_ids = torch.arange(start + 1, start + s + 1, device=inputs_embeds.device)
            position_ids = position_ids.expand(b, s)
            keep = None
        else:
            if start:
                raise ValueError("a cached prefix is used without a padding mask")
            keep = attention_mask.bool()
            position_ids = attention_mask.long().cumsum(-1)
        mask4d = None
        if keep is not None and not bool(keep.all()):
            # bidirectional: every query sees every real key
            mask4d = keep[:, None, None, :].expand(b, 1, s, s)
        if prefix_len:
            blocked = torch.zeros(s, s, dtype=torch.bool, device=inputs_embeds.device)
            blocked[:prefix_len, prefix_len:] = True  # the prefix does not see the rest
            base = mask4d if mask4d is not None else torch.ones_like(blocked)[None, None]
            mask4d = (base & ~blocked).expand(b, 1, s, s)
        position_embeddings = self.rotary_emb(inputs_embeds, position_ids)
        hidden = inputs_embeds
        recompute = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for layer in self.layers:
            kwargs = {
                "attention_mask": mask4d,
                "position_ids": position_ids,
                "position_embeddings": position_embeddings,
                "past_key_values": cache,
            }
            if recompute:
                hidden = checkpoint(layer, hidden, use_reentrant=False, **kwargs)
            else:
                hidden = layer(hidden, **kwargs)
        if cache is not None and not cache.filled:
            cache.filled, cache.length = True, s
        return self.norm(hidden)


class PrefixCache:
    """The keys and values of a prompt, per layer, for the prompt-cached flow head:
    filled by one backbone pass over the prompt; every later pass over a block of
    positions after it attends to prompt + block and appends nothing, so the same
    cache serves every Euler step. (transformers' attention layers call `update`.)"""

    def __init__(self) -> None:
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.filled = False
        self.length = 0

    def update(
        self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.filled:
            self.keys.append(key)
            self.values.append(value)
            return key, value
        keys = torch.cat([self.keys[layer_idx], key], dim=-2)
        return keys, torch.cat([self.values[layer_idx], value], dim=-2)


class MultiModalProjector(nn.Module):
    def __init__(self, cfg: DreamVLAConfig) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(cfg.vision.hidden_size, cfg.hidden_size, bias=True)
        self.act = ACT2FN[cfg.projector_hidden_act]  # as the official projector
        self.linear_2 = nn.Linear(cfg.hidden_size, cfg.hidden_size, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(x)))


@dataclass
class ForwardOutput:
    hidden: torch.Tensor  # (B, S, D) final-norm hidden states of the prompt + action positions
    logits: torch.Tensor | None  # (B, S, V) when asked for


class DreamVLA(nn.Module):
    """The backbone model; the action heads are attached as submodules when the
    config asks for them (`action_head`, `noisy_action_projector`, `proprio_projector`)."""

    def __init__(self, cfg: DreamVLAConfig, attn_implementation: str = "sdpa") -> None:
        super().__init__()
        self.cfg = cfg
        self.visual = Qwen2VisionTransformerPretrainedModel._from_config(
            vision_config(cfg, attn_implementation)
        )
        self.model = DreamBackbone(cfg, attn_implementation)
        self.projector = MultiModalProjector(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        a = cfg.action
        self.proprio_projector = (
            ProprioProjector(a.proprio_dim, cfg.hidden_size) if a.proprio_dim > 0 else None
        )
        self.action_head: nn.Module | None = None
        self.noisy_action_projector = None
        if a.head == "flow":
            self.action_head = FlowMatchingActionHead(
                cfg.hidden_size, cfg.head_hidden, a.action_dim
            )
            self.noisy_action_projector = NoisyActionProjector(cfg.hidden_size)
        elif a.head == "l1":
            self.action_head = L1RegressionActionHead(
                cfg.hidden_size, cfg.head_hidden, a.action_dim
            )
        self.graphs: GraphCache | None = None  # see use_cuda_graphs
        self._vision_positions: dict[tuple, torch.Tensor] = {}

    def use_cuda_graphs(self, enabled: bool = True, max_entries: int = 8) -> None:
        """Replay CUDA graphs of the vision tower and the backbone at inference
        (eval mode, no grad, CUDA tensors, no padding mask); model/graphs.py says why
        and what it needs. Off by default; the policy turns it on for a GPU."""
        self.graphs = GraphCache(max_entries) if enabled else None
        self._vision_positions.clear()

    def _graphable(self, *tensors: torch.Tensor) -> bool:
        return (
            self.graphs is not None
            and not self.training
            and not torch.is_grad_enabled()
            and all(t.is_cuda for t in tensors)
        )

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Recompute backbone layers (and vision blocks) in the backward pass."""
        self.model.gradient_checkpointing = enabled
        vision = self.visual
        if enabled:
            if hasattr(vision, "activation_checkpointing_enable"):  # transformers >= 5
                vision.activation_checkpointing_enable({"use_reentrant": False})
            else:
                vision.gradient_checkpointing_enable({"use_reentrant": False})
        elif getattr(vision, "is_activation_checkpointing", False) or getattr(
            vision, "gradient_checkpointing", False
        ):
            if hasattr(vision, "activation_checkpointing_disable"):
                vision.activation_checkpointing_disable()
            else:
                vision.gradient_checkpointing_disable()

    # -- pieces -------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    def image_features(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        """Patches (N, C*T*P*P) and per-image (t, h, w) -> projected tokens (M, D)."""
        pixel_values = pixel_values.to(self.dtype)
        if self._graphable(pixel_values) and self.visual.config._attn_implementation == "sdpa":
            return self._graphed_image_features(pixel_values, grid_thw)
        out = self.visual(pixel_values, grid_thw=grid_thw)
        merged = out.pooler_output if hasattr(out, "pooler_output") else out
        return self.projector(merged)

    def _graphed_image_features(
        self, pixel_values: torch.Tensor, grid_thw: torch.Tensor
    ) -> torch.Tensor:
        assert self.graphs is not None
        grid = tuple(tuple(int(v) for v in row) for row in grid_thw.tolist())
        return self.graphs.run(("vision", grid), self.sync_free_vision(grid), pixel_values)

    def sync_free_vision(
        self, grid: tuple[tuple[int, ...], ...]
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        """patches -> projected image tokens for this grid ((t, h, w) per image), with no
        CPU-GPU synchronisation inside, so it can be captured: the grid stays on the
        CPU (the packed attention reads its lengths from it in every layer) and the
        rotary positions are computed once per grid, on the model's device."""
        grid_cpu = torch.tensor(grid, dtype=torch.long)
        positions = self._vision_positions.get(grid)
        if positions is None:
            merge = self.visual.spatial_merge_size
            positions = get_vision_position_ids(grid_cpu, merge).to(self.device)
            self._vision_positions[grid] = positions

        def features(pixels: torch.Tensor) -> torch.Tensor:
            out = self.visual(pixels, grid_thw=grid_cpu, position_ids=positions)
            return self.projector(out.pooler_output)

        return features

    def embed_prompt(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        grid_thw: torch.Tensor | None = None,
        shared_images: bool = False,
    ) -> torch.Tensor:
        """Token embeddings with the image pads replaced by image features: (B, S, D).
        `shared_images`: `pixel_values` are one row's images, shown to every row (the
        vision tower runs once)."""
        embeds = self.model.embed_tokens(input_ids)
        is_image = input_ids == self.cfg.image_token_id
        n_pads = int(is_image.sum())
        if pixel_values is None:
            if n_pads:
                raise ValueError(f"the prompt has {n_pads} image tokens but no pixel_values")
            return embeds
        features = self.image_features(pixel_values, grid_thw)
        if shared_images:
            features = features.repeat(input_ids.shape[0], 1)
        if features.shape[0] != n_pads:
            raise ValueError(
                f"image features and image tokens do not match: {features.shape[0]} features, "
                f"{n_pads} image tokens in the prompt"
            )
        return embeds.masked_scatter(is_image[..., None], features.to(embeds.dtype))

    def forward_embeds(
        self,
        embeds: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        proprio: torch.Tensor | None = None,
        time_token: torch.Tensor | None = None,
        logits: bool = False,
        prefix_len: int = 0,
        cache: PrefixCache | None = None,
    ) -> ForwardOutput:
        """Run the backbone on (B, S, D) embeddings, prepending the time and proprio
        tokens; the returned hidden states cover the S input positions only.
        `prefix_len` (block-causal) counts input positions, the prepended tokens are
        added to it; `cache` as in DreamBackbone.forward."""
        prefix = []
        if proprio is not None:
            if self.proprio_projector is None:
                raise ValueError("this model has no proprio projector (action.proprio_dim = 0)")
            prefix.append(self.proprio_projector(proprio.to(embeds.dtype))[:, None, :])
        if time_token is not None:
            prefix.append(time_token.to(embeds.dtype))
        n_prefix = len(prefix)
        if n_prefix:
            embeds = torch.cat([*prefix, embeds], dim=1)
            if attention_mask is not None:
                ones = attention_mask.new_ones(attention_mask.shape[0], n_prefix)
                attention_mask = torch.cat([ones, attention_mask], dim=1)
        if prefix_len:
            prefix_len += n_prefix
        if attention_mask is None and not prefix_len and cache is None and self._graphable(embeds):
            assert self.graphs is not None
            hidden = self.graphs.run("backbone", self.model, embeds)[:, n_prefix:]
        else:
            hidden = self.model(embeds, attention_mask, prefix_len, cache)[:, n_prefix:]
        return ForwardOutput(hidden=hidden, logits=self.lm_head(hidden) if logits else None)
