"""Dream-VLA shapes and action settings, with the two presets.

`DreamVLAConfig.to_json_dict()` writes the published `config.json` keys (those
of the official DreamVL config: hidden_size, num_hidden_layers, ...,
vision_config{depth, embed_dim, ...}) plus an `action` block of ours;
`from_json_dict()` reads them back and names any missing key.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

HEADS = ("discrete", "flow", "l1")
DECODINGS = ("restricted", "official")
FLOW_ATTENTIONS = ("full", "prompt_cached")
RESIZES = ("torch", "pil")
# projector activations (transformers' ACT2FN names) that the modeling builds
PROJECTOR_ACTS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "quick_gelu", "relu", "silu")


class ModelConfigError(ValueError):
    """A configuration that cannot describe a Dream-VLA model; the message says why."""


@dataclass(frozen=True)
class VisionConfig:
    depth: int = 32
    embed_dim: int = 1280
    hidden_size: int = 3584  # output width of the patch merger
    num_heads: int = 16
    mlp_ratio: int = 4
    hidden_act: str = "quick_gelu"
    in_channels: int = 3
    patch_size: int = 14
    spatial_merge_size: int = 2
    temporal_patch_size: int = 2


@dataclass(frozen=True)
class ActionConfig:
    head: str = "discrete"  # discrete | flow | l1
    action_dim: int = 7  # 6 joints + gripper
    chunk: int = 8  # actions per chunk
    n_bins: int = 256  # uniform bin edges over [-1, 1] (255 bin centres)
    proprio_dim: int = 7  # 0 = no proprio token
    # ours: the proprio token's last value is the episode clock, the time since the
    # policy began the task [s] (docs/model.md); the robot state is the values before it
    clock_input: bool = False
    head_hidden: int = 0  # MLP width of the flow / L1 heads (0 = backbone width)
    flow_steps: int = 4
    action_period_s: float = 0.05  # time between consecutive actions of a chunk
    # discrete decoding: "restricted" (ours) picks action tokens only at the action
    # positions and keeps the suffix; "official" masks and decodes the suffix too, over
    # the whole vocabulary, as the official decoder does (docs/model.md)
    decoding: str = "restricted"
    # flow head: "full" (official: the prompt attends to the noisy actions, every
    # Euler step runs the whole sequence) or "prompt_cached" (ours: the prompt does
    # not see the actions, its keys and values are computed once per chunk and each
    # Euler step runs the time token, the action tokens and the suffix only)
    flow_attention: str = "full"
    # ours: the first `relative_dims` action values are offsets from the same values of
    # the robot state at the observation (a joint target = measured joint + offset);
    # the rest (the gripper) stay absolute. 0: all absolute, as the official
    # checkpoints (docs/model.md)
    relative_dims: int = 0

    @property
    def state_dim(self) -> int:
        """Robot-state values the proprio token reads (the clock excluded)."""
        return self.proprio_dim - int(self.clock_input)


@dataclass(frozen=True)
class DreamVLAConfig:
    # backbone (Dream 7B = Qwen2.5-7B shapes)
    hidden_size: int = 3584
    num_hidden_layers: int = 28
    num_attention_heads: int = 28
    num_key_value_heads: int = 4
    intermediate_size: int = 18944
    base_vocab_size: int = 152064  # text vocabulary (config.json vocab_size)
    # 0: the action tokens are n_bins ids appended after the text vocabulary (this
    # project's own layout); > 0: the official layout, where they are the n_bins ids
    # just below this one inside the text vocabulary (151923: the Dream tokenizer's
    # 151667 entries plus the 256 action tokens the official finetuning adds)
    action_token_end: int = 0
    # every camera frame is resized to image_size x image_size pixels, a multiple of
    # patch_size * spatial_merge_size (224: 64 tokens per image, as the official
    # finetuning; 336: 144; 448: 256)
    image_size: int = 224
    # how frames of another size are resized: "torch" (PyTorch's bicubic with
    # antialiasing, fast) or "pil" (PIL's bicubic, as the official image processor)
    image_resize: str = "torch"
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 131072
    hidden_act: str = "silu"
    projector_hidden_act: str = "gelu"
    # special tokens (Qwen2 / Dream ids for the 7B model)
    pad_token_id: int = 151643
    mask_token_id: int = 151666
    image_token_id: int = 151655
    vision_start_token_id: int = 151652
    vision_end_token_id: int = 151653
    im_start_token_id: int = 151644
    im_end_token_id: int = 151645
    newline_token_id: int = 198
    vision: VisionConfig = field(default_factory=VisionConfig)
    action: ActionConfig = field(default_factory=ActionConfig)

    def __post_init__(self) -> None:
        problems = []
        if self.hidden_size % self.num_attention_heads:
            problems.append("hidden_size must be divisible by num_attention_heads")
        if self.num_attention_heads % self.num_key_value_heads:
            problems.append("num_attention_heads must be divisible by num_key_value_heads")
        if (self.hidden_size // self.num_attention_heads) % 2:
            problems.append("the attention head size must be even (rotary embedding)")
        if self.vision.embed_dim % self.vision.num_heads:
            problems.append("vision.embed_dim must be divisible by vision.num_heads")
        if self.action.head not in HEADS:
            problems.append(f"action.head must be one of {HEADS}, got '{self.action.head}'")
        if self.action.clock_input and self.action.proprio_dim < 1:
            problems.append("action.clock_input needs action.proprio_dim >= 1 (the clock's slot)")
        if self.action.n_bins < 2 or self.action.chunk < 1 or self.action.action_dim < 1:
            problems.append("action.n_bins >= 2, action.chunk >= 1 and action.action_dim >= 1")
        if self.action.flow_attention not in FLOW_ATTENTIONS:
            problems.append(f"action.flow_attention must be one of {FLOW_ATTENTIONS}")
        elif self.action.flow_attention != "full" and self.action.head != "flow":
            problems.append("action.flow_attention prompt_cached needs the flow head")
        if self.action.decoding not in DECODINGS:
            problems.append(f"action.decoding must be one of {DECODINGS}")
        if self.projector_hidden_act not in PROJECTOR_ACTS:
            problems.append(f"projector_hidden_act must be one of {PROJECTOR_ACTS}")
        if self.image_resize not in RESIZES:
            problems.append(f"image_resize must be one of {RESIZES}")
        token_px = self.vision.patch_size * self.vision.spatial_merge_size
        if self.image_size < token_px or self.image_size % token_px:
            problems.append(f"image_size must be a positive multiple of {token_px} pixels")
        if self.action_token_end and not (
            self.action.n_bins < self.action_token_end <= self.base_vocab_size
        ):
            problems.append("action_token_end must lie in (n_bins, vocab_size]")
        for name in ("pad_token_id", "mask_token_id", "image_token_id", "im_end_token_id"):
            if not 0 <= getattr(self, name) < self.base_vocab_size:
                problems.append(f"{name} must be inside the text vocabulary")
        if problems:
            raise ModelConfigError("; ".join(problems))

    # -- derived ------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        """Rows of the embedding and the lm_head: the text vocabulary, plus one token
        per action bin in this project's own layout."""
        if self.action_token_end:
            return self.base_vocab_size
        return self.base_vocab_size + self.action.n_bins

    @property
    def token_end(self) -> int:
        """One past the highest action token id (the official `len(tokenizer)`)."""
        return self.action_token_end or self.vocab_size

    @property
    def action_tokens(self) -> int:
        return self.action.chunk * self.action.action_dim

    @property
    def head_hidden(self) -> int:
        return self.action.head_hidden or self.hidden_size

    # -- config.json ----------------------------------------------------------------------
    def to_json_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("vision",)}
        out.pop("action")
        out["vocab_size"] = self.vocab_size
        out["model_type"] = "dream-vla"
        out["vision_config"] = asdict(self.vision)
        out["action_config"] = asdict(self.action)
        return out

    @classmethod
    def from_json_dict(cls, data: dict[str, Any]) -> DreamVLAConfig:
        try:
            vision = VisionConfig(
                **{f.name: data["vision_config"][f.name] for f in fields(VisionConfig)}
            )
            action = ActionConfig(**data.get("action_config", {}))
            top = {
                f.name: data[f.name]
                for f in fields(cls)
                if f.name not in ("vision", "action") and f.name in data
            }
        except KeyError as exc:
            raise ModelConfigError(f"config.json lacks the key {exc}") from exc
        except TypeError as exc:
            raise ModelConfigError(f"config.json has an unknown action_config key: {exc}") from exc
        if "base_vocab_size" not in top:
            # the published config has only vocab_size (text vocabulary)
            if "vocab_size" not in data:
                raise ModelConfigError("config.json lacks the key 'vocab_size'")
            top["base_vocab_size"] = data["vocab_size"]
        return cls(vision=vision, action=action, **top)


# special-token ids of the small presets: the first 8 ids, text bytes after them
_SMALL_SPECIAL_TOKENS: dict[str, Any] = {
    "pad_token_id": 0,
    "mask_token_id": 1,
    "image_token_id": 2,
    "vision_start_token_id": 3,
    "vision_end_token_id": 4,
    "im_start_token_id": 5,
    "im_end_token_id": 6,
    "newline_token_id": 7,
}


def dream_vla_7b(**action: Any) -> DreamVLAConfig:
    """The published Dream-VLA shapes (Dream 7B backbone, Qwen2-VL ViT)."""
    return DreamVLAConfig(action=ActionConfig(**action))


def tiny(**action: Any) -> DreamVLAConfig:
    """A few-MB model with the same structure, for tests and the CPU demo."""
    return DreamVLAConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        base_vocab_size=512,
        max_position_embeddings=4096,
        **_SMALL_SPECIAL_TOKENS,
        vision=VisionConfig(depth=2, embed_dim=32, hidden_size=64, num_heads=2),
        action=ActionConfig(**{"head_hidden": 64, **action}),
    )


def mid(**action: Any) -> DreamVLAConfig:
    """A mid-size preset for CPU benchmarks (about 1/8 of the 7B width, 4 layers)."""
    return DreamVLAConfig(
        hidden_size=512,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=2,
        intermediate_size=2048,
        base_vocab_size=8192,
        **_SMALL_SPECIAL_TOKENS,
        vision=VisionConfig(depth=4, embed_dim=256, hidden_size=512, num_heads=4),
        action=ActionConfig(**{"head_hidden": 256, **action}),
    )


PRESETS = {"dream-vla-7b": dream_vla_7b, "tiny": tiny, "mid": mid}


def preset(name: str, **action: Any) -> DreamVLAConfig:
    if name not in PRESETS:
        raise ModelConfigError(f"unknown preset '{name}'; choose one of {sorted(PRESETS)}")
    return PRESETS[name](**action)
