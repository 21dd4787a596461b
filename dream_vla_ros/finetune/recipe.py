"""Finetuning recipes: YAML in config/finetune/ -> a validated, frozen `Recipe`.

A recipe names the data, the model to start from, the adapter (LoRA or full
finetuning) and the optimisation. Command-line overrides use dotted keys
(`train.steps=200 lora.enabled=false`); values are parsed as YAML scalars. Every
problem raises `RecipeError` with one sentence naming the key and what is wrong;
every key's check is in this one module (longer than most), next to its default.
"""

from __future__ import annotations

import contextlib
import math
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from dream_vla_ros.control.config import yaml_problem
from dream_vla_ros.model.config import HEADS, PRESETS
from dream_vla_ros.paths import share_dir

# string settings whose words YAML 1.1 reads as booleans: key -> (true word, false word)
YAML_BOOL_WORDS = {
    "model.gradient_checkpointing": ("on", "off"),
    "model.mixed_precision": (None, "no"),
}


class RecipeError(ValueError):
    """A recipe that cannot be trained; the message is one sentence naming the key."""


@dataclass(frozen=True)
class AugmentConfig:
    """Training-only image augmentation (never applied to validation or inference)."""

    crop_scale: tuple[float, float] = (0.9, 1.0)  # random resized crop: area fraction range
    brightness: float = 0.2  # factor drawn from [1 - b, 1 + b]
    contrast: float = 0.2
    saturation: float = 0.2
    # Words naming the colours of the red, green and blue channels (e.g. [red, green,
    # blue]); when set, each sample's image channels are permuted at random and those
    # words in its instruction swapped to match: a red cube turns green and is called
    # green. For tasks whose instruction names colours (docs/sim.md); empty: off.
    colour_words: tuple[str, ...] = ()
    # std of Gaussian noise added to the normalised joint state (data.proprio; the
    # bounds map to [-1, 1]): the model cannot read the state exactly, so it has to
    # look at the images too (against "continue from the state" copying). 0: off.
    proprio_noise: float = 0.0
    # Probability that a training sample's instruction is masked (the prompt's
    # instruction tokens replaced by the mask token), so the model also learns the
    # instruction-free action distribution that classifier-free guidance
    # (PolicySettings.guidance_scale) extrapolates away from. 0: off.
    instruction_dropout: float = 0.0


@dataclass(frozen=True)
class DataConfig:
    dataset: str = ""  # LeRobot v3.0 / v2.1 folder (relative paths: to the working directory)
    cameras: tuple[str, ...] = ("observation.images.front", "observation.images.wrist")
    # the dataset's action and joint-state columns (another LeRobot dataset may call
    # them e.g. `actions` and `observation.joint_state`; its camera keys go in cameras)
    action_key: str = "action"
    state_key: str = "observation.state"
    chunk: int = 8  # actions per chunk (H)
    action_offset: int = 1  # chunk[k] = action row t + offset + k (the policy's stamp convention)
    proprio: bool = True
    # the model also reads the episode clock, the seconds since the episode's first
    # frame plus the dataset's clock_start_s for it (0 but for continuations that took
    # over a rollout, evaluation/dagger.py); at run time the seconds since the policy's
    # first observation after it was enabled, reset or given an instruction; clipped
    # to the training range: where in a demonstration it is, without the joint state
    # (docs/finetune.md, docs/sim.md)
    clock: bool = False
    # the first `relative_dims` action values are learnt as offsets from the same
    # values of the joint state at the observation frame (a chunk's joint targets
    # minus the measured joints it was planned from); the policy adds the measured
    # joints back. 0: absolute targets. 6 on the PiPER: the joints relative, the
    # gripper absolute (docs/finetune.md)
    relative_dims: int = 0
    val_fraction: float = 0.1  # share of episodes held out (at least one when > 0)
    split_seed: int = 0
    center_crop: bool = False  # must match the policy node's model.center_crop
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    max_cache_gb: float = 8.0  # decoded frames (224x224 by default) are cached in memory
    # a folder: the decoded frames are kept there instead (one .npy per episode,
    # memory-mapped; max_cache_gb no longer bounds them, the disk does) and reused by
    # later runs on the same dataset, cameras and input size (docs/finetune.md)
    frame_cache: str = ""
    # normalisation bounds: the norm_quantile and 1 - norm_quantile quantiles of the
    # training episodes (0.01: the official q01/q99); targets are clipped to them, so
    # the policy never commands what lies outside: 0 (min/max) where the extremes
    # matter and the data has no outliers (docs/finetune.md)
    norm_quantile: float = 0.01
    # rows past an episode's end repeat its last action; False: left out of the loss
    # (ACT's convention), True: trained as "hold there" (Diffusion Policy's), for
    # demonstrations that end with the arm at rest on the goal (docs/finetune.md)
    hold_after_end: bool = False
    # training windows that start in an episode's first `start_frames` frames appear
    # `start_repeat` times per epoch (validation unchanged): where a reach begins, the
    # decision (which cube) is made, and those windows are few (docs/finetune.md;
    # no gain on the sim touch task, docs/sim.md)
    start_frames: int = 0
    start_repeat: int = 1
    # training windows of episodes whose last action has |action[oversample_dim]| >=
    # oversample_min_abs appear `oversample_repeat` times per epoch (validation
    # unchanged): demonstrations that end in a rare part of the workspace, e.g. the wide
    # reaches (the base joint turned far) that the sim touch task fails most
    # (docs/finetune.md, docs/sim.md). 1: off.
    oversample_dim: int = 0
    oversample_min_abs: float = 0.0
    oversample_repeat: int = 1


@dataclass(frozen=True)
class ModelConfig:
    base: str = "tiny"  # a preset name or a checkpoint directory
    # an official base holding several datasets' statistics: the one its action space
    # is read from (the trained model's statistics come from the data)
    unnorm_key: str = ""
    head: str = "flow"  # flow | discrete | l1
    flow_attention: str = "full"  # flow head: full | prompt_cached (docs/model.md)
    init_seed: int = 0  # initialises a preset's weights and new heads
    flow_steps: int = 4
    freeze_vision: bool = False
    gradient_checkpointing: str = "auto"  # auto (on for cuda) | on | off
    mixed_precision: str = "auto"  # auto (bf16 on cuda) | no | bf16 | fp16


@dataclass(frozen=True)
class LoraSettings:
    enabled: bool = True
    r: int = 32
    alpha: int = 16
    dropout: float = 0.0


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1000  # optimizer steps
    batch_size: int = 8  # per process and micro-step
    grad_accum: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    # exponential moving average of the trainable weights, saved and validated in
    # their place (Diffusion Policy's practice); 0 = off. The decay ramps up as
    # min(ema_decay, (1 + step) / (10 + step)) so early weights fade fast.
    ema_decay: float = 0.0
    # learning rate of the pretrained VLM's weights (vision tower, projector, language
    # model) relative to `lr`; the action heads, new at finetuning, always get `lr`
    backbone_lr_scale: float = 1.0
    warmup_steps: int = 50
    schedule: str = "cosine"  # cosine | linear | constant (after warm-up)
    min_lr_ratio: float = 0.1
    max_grad_norm: float = 1.0  # 0 = no clipping
    seed: int = 0
    num_workers: int = 0
    log_every: int = 10
    val_every: int = 100  # 0 = only at the end
    val_samples: int = 64
    save_every: int = 500  # 0 = only at the end
    keep_last: int = 2
    device: str = "auto"  # auto | cpu | cuda


@dataclass(frozen=True)
class Recipe:
    name: str = "run"
    output_dir: str = "runs/{name}"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    train: TrainConfig = field(default_factory=TrainConfig)
    source: str = ""  # the file it was read from (not a setting)

    @property
    def output(self) -> Path:
        return Path(self.output_dir.format(name=self.name))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("source")
        return _plain(out)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# ---------------------------------------------------------------------------- parsing


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if is_dataclass(tp):
        if not isinstance(value, dict):
            raise RecipeError(f"'{key}' must be a mapping, got {type(value).__name__}")
        return _build(tp, value, key + ".")
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise RecipeError(f"'{key}' must be a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise RecipeError(f"'{key}' must have {len(args)} values, got {len(value)}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if tp is bool:
        if not isinstance(value, bool):
            raise RecipeError(f"'{key}' must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise RecipeError(f"'{key}' must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RecipeError(f"'{key}' must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, bool) and key in YAML_BOOL_WORDS:
            # YAML 1.1 reads unquoted on/off/no as booleans
            word = YAML_BOOL_WORDS[key][0 if value else 1]
            if word is not None:
                return word
        if not isinstance(value, str):
            raise RecipeError(f"'{key}' must be a string, got {value!r}")
        return value
    raise RecipeError(f"'{key}': unsupported type {_type_name(tp)}")  # pragma: no cover


def _build(cls: Any, data: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls) if f.name != "source"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise RecipeError(
            f"unknown recipe key '{prefix}{unknown[0]}' (known in this section: {sorted(known)})"
        )
    values = {}
    for f in fields(cls):
        if f.name in data:
            values[f.name] = _coerce(data[f.name], hints[f.name], prefix + f.name)
        elif f.default is MISSING and f.default_factory is MISSING:  # pragma: no cover
            raise RecipeError(f"the recipe lacks '{prefix}{f.name}'")
    return cls(**values)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """`a.b=value` strings onto a nested dict (values parsed as YAML scalars)."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise RecipeError(f"override '{item}' is not of the form section.key=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise RecipeError(f"override '{item}': '{part}' is not a section")
            node = child
        node[parts[-1]] = value
    return data


def validate(recipe: Recipe) -> Recipe:
    d, m, lo, t = recipe.data, recipe.model, recipe.lora, recipe.train
    checks = [
        (bool(d.dataset), "'data.dataset' must name a LeRobot dataset folder"),
        (1 <= len(d.cameras) <= 2, "'data.cameras' must list one or two camera keys"),
        (len(set(d.cameras)) == len(d.cameras), "'data.cameras' lists a camera twice"),
        (bool(d.action_key), "'data.action_key' must name the dataset's action column"),
        (bool(d.state_key), "'data.state_key' must name the dataset's joint-state column"),
        (d.chunk >= 1, "'data.chunk' must be >= 1"),
        (d.relative_dims >= 0, "'data.relative_dims' must be >= 0 (0: absolute actions)"),
        (d.action_offset >= 0, "'data.action_offset' must be >= 0"),
        (0.0 <= d.val_fraction < 1.0, "'data.val_fraction' must be in [0, 1)"),
        (0.0 <= d.norm_quantile < 0.5, "'data.norm_quantile' must be in [0, 0.5)"),
        (d.start_frames >= 0, "'data.start_frames' must be >= 0"),
        (d.start_repeat >= 1, "'data.start_repeat' must be >= 1"),
        (d.oversample_repeat >= 1, "'data.oversample_repeat' must be >= 1"),
        (d.oversample_dim >= 0, "'data.oversample_dim' must be >= 0 (an action dimension)"),
        (
            math.isfinite(d.oversample_min_abs) and d.oversample_min_abs >= 0.0,
            "'data.oversample_min_abs' must be finite and >= 0",
        ),
        (
            0.0 < d.augment.crop_scale[0] <= d.augment.crop_scale[1] <= 1.0,
            "'data.augment.crop_scale' must be [low, high] with 0 < low <= high <= 1",
        ),
        (
            all(0.0 <= x < 1.0 for x in (d.augment.brightness, d.augment.contrast)),
            "'data.augment.brightness' and 'contrast' must be in [0, 1)",
        ),
        (0.0 <= d.augment.saturation < 1.0, "'data.augment.saturation' must be in [0, 1)"),
        (
            0.0 <= d.augment.proprio_noise <= 1.0,
            "'data.augment.proprio_noise' must be in [0, 1] (normalised units)",
        ),
        (
            0.0 <= d.augment.instruction_dropout < 1.0,
            "'data.augment.instruction_dropout' must be in [0, 1)",
        ),
        (
            not d.augment.colour_words
            or (
                len(d.augment.colour_words) == 3
                and len({w.lower() for w in d.augment.colour_words}) == 3
                and all(w.isalpha() for w in d.augment.colour_words)
            ),
            "'data.augment.colour_words' must be empty or three different words "
            "(the colours of the red, green and blue channels)",
        ),
        (d.max_cache_gb > 0, "'data.max_cache_gb' must be > 0"),
        (m.head in HEADS, f"'model.head' must be one of {list(HEADS)}, got '{m.head}'"),
        (
            m.base in PRESETS or Path(m.base).is_dir(),
            f"'model.base' must be a preset {sorted(PRESETS)} or an existing checkpoint "
            f"directory, got '{m.base}'",
        ),
        (m.flow_steps >= 1, "'model.flow_steps' must be >= 1"),
        (
            m.flow_attention == "full"
            or (m.flow_attention == "prompt_cached" and m.head == "flow"),
            "'model.flow_attention' must be full, or prompt_cached with the flow head",
        ),
        (
            m.gradient_checkpointing in ("auto", "on", "off"),
            "'model.gradient_checkpointing' must be auto, on or off",
        ),
        (
            m.mixed_precision in ("auto", "no", "bf16", "fp16"),
            "'model.mixed_precision' must be auto, no, bf16 or fp16",
        ),
        (lo.r >= 1 and lo.alpha >= 1, "'lora.r' and 'lora.alpha' must be >= 1"),
        (0.0 <= lo.dropout < 1.0, "'lora.dropout' must be in [0, 1)"),
        (t.steps >= 1, "'train.steps' must be >= 1"),
        (t.batch_size >= 1 and t.grad_accum >= 1, "'train.batch_size' and 'grad_accum' >= 1"),
        (t.lr > 0, "'train.lr' must be > 0"),
        (t.weight_decay >= 0, "'train.weight_decay' must be >= 0"),
        (all(0 <= b < 1 for b in t.betas), "'train.betas' must be in [0, 1)"),
        (0 <= t.ema_decay < 1, "'train.ema_decay' must be in [0, 1)"),
        (
            0 < t.backbone_lr_scale <= 1,
            "'train.backbone_lr_scale' must be in (0, 1] (freeze with model.freeze_vision "
            "or LoRA instead of 0)",
        ),
        (t.warmup_steps >= 0, "'train.warmup_steps' must be >= 0"),
        (
            t.schedule in ("cosine", "linear", "constant"),
            "'train.schedule' must be cosine, linear or constant",
        ),
        (0.0 <= t.min_lr_ratio <= 1.0, "'train.min_lr_ratio' must be in [0, 1]"),
        (t.max_grad_norm >= 0, "'train.max_grad_norm' must be >= 0"),
        (t.num_workers >= 0, "'train.num_workers' must be >= 0"),
        (t.log_every >= 1, "'train.log_every' must be >= 1"),
        (t.val_every >= 0 and t.save_every >= 0, "'train.val_every'/'save_every' must be >= 0"),
        (t.val_samples >= 1, "'train.val_samples' must be >= 1"),
        (t.keep_last >= 1, "'train.keep_last' must be >= 1"),
        (t.device in ("auto", "cpu", "cuda"), "'train.device' must be auto, cpu or cuda"),
        (bool(recipe.name.strip()), "'name' must not be empty"),
    ]
    for ok, message in checks:
        if not ok:
            raise RecipeError(message)
    return recipe


def _resolve_base(base: str) -> str:
    """A relative checkpoint folder that is not under the working directory is
    looked up in the package's share folder, where models/ ships
    (`base: models/tiny_grounded` works from any directory)."""
    if base in PRESETS or Path(base).is_absolute() or Path(base).is_dir():
        return base
    try:
        shipped = share_dir() / base
    except FileNotFoundError:
        return base
    return str(shipped) if shipped.is_dir() else base


def recipe_from_dict(data: dict[str, Any], source: str = "") -> Recipe:
    if not isinstance(data, dict):
        raise RecipeError(f"a recipe must be a YAML mapping, got {type(data).__name__}")
    recipe = _build(Recipe, data)
    model = replace(recipe.model, base=_resolve_base(recipe.model.base))
    return validate(replace(recipe, model=model, source=source))


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise RecipeError(f"recipe file {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise RecipeError(f"recipe file {path} is not valid YAML: {yaml_problem(exc)}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"recipe file {path} must hold a YAML mapping")
    return recipe_from_dict(apply_overrides(data, list(overrides or [])), str(path))


def dump_recipe(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.to_dict(), sort_keys=False)
