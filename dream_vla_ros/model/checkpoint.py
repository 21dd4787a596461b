"""Load and save Dream-VLA checkpoints in the published directory layout.

    config.json                          shapes (published keys) + our action_config
    model.safetensors                    or model-0000N-of-0000M.safetensors shards
    model.safetensors.index.json         {"weight_map": {name: shard}} when sharded
    action_head.safetensors              flow / L1 head (keys as in the official heads)
    noisy_action_projector.safetensors   flow head only (fc1.*, fc2.*)
    proprio_projector.safetensors        when action_config.proprio_dim > 0 (fc1.*, fc2.*)
    norm_stats.json                      {"action": {"q01": [...], "q99": [...], "mask"?},
                                          "proprio": {...}}
    tokenizer.json                       (the policy's tokenizer; see policy/prompt.py)

A LoRA checkpoint from `dream-vla train` has no backbone weights of its own:
`adapter_config.json` + `adapter_model.safetensors` (peft's format) instead, and
`adapter_config.json["base_model_name_or_path"]` names the base checkpoint
directory (relative to this one, or absolute). Loading reads the base backbone,
this directory's config, heads and stats, and merges the adapter into the
weights (peft), so inference runs at the speed of a plain checkpoint.

Backbone names: `visual.*`, `model.*`, `projector.*`, `lm_head.*`. Only
safetensors are read: a pickle file (.bin/.pt/.pth/.ckpt/.pkl) is refused, never
unpickled. Every key and shape is checked before anything is copied, and one
error lists everything missing, unexpected or mis-shaped.

The layout is read and written in this one module (longer than most) so that the
two cannot drift apart.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from dream_vla_ros.model import official
from dream_vla_ros.model.config import DreamVLAConfig, ModelConfigError
from dream_vla_ros.model.modeling import DreamVLA

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PART_FILES = {
    "action_head": "action_head.safetensors",
    "noisy_action_projector": "noisy_action_projector.safetensors",
    "proprio_projector": "proprio_projector.safetensors",
}
BACKBONE_PREFIXES = ("visual.", "model.", "projector.", "lm_head.")


class CheckpointError(RuntimeError):
    """The checkpoint cannot be loaded; the message names every problem and the file."""


@dataclass(frozen=True)
class NormStats:
    """Per-dimension q01/q99 bounds; `mask` False leaves a dimension un-normalised."""

    q01: np.ndarray
    q99: np.ndarray
    mask: np.ndarray = field(default_factory=lambda: np.ones(0, dtype=bool))

    def __post_init__(self) -> None:
        if self.q01.shape != self.q99.shape or self.q01.ndim != 1:
            raise CheckpointError("norm stats q01 and q99 must be 1-D and of equal length")
        if not (np.all(np.isfinite(self.q01)) and np.all(np.isfinite(self.q99))):
            raise CheckpointError("norm stats contain NaN or Inf")
        if np.any(self.q99 < self.q01):
            raise CheckpointError("norm stats have q99 < q01")
        if self.mask.size == 0:
            object.__setattr__(self, "mask", np.ones_like(self.q01, dtype=bool))

    def normalise(self, x: np.ndarray) -> np.ndarray:
        scaled = 2.0 * (x - self.q01) / (self.q99 - self.q01 + 1e-8) - 1.0
        return np.where(self.mask, np.clip(scaled, -1.0, 1.0), x)

    def unnormalise(self, y: np.ndarray) -> np.ndarray:
        return np.where(self.mask, 0.5 * (y + 1.0) * (self.q99 - self.q01 + 1e-8) + self.q01, y)

    def to_json(self) -> dict[str, list]:
        return {"q01": self.q01.tolist(), "q99": self.q99.tolist(), "mask": self.mask.tolist()}

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str) -> NormStats:
        try:
            q01 = np.asarray(data["q01"], dtype=np.float64)
            q99 = np.asarray(data["q99"], dtype=np.float64)
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{where}: needs numeric 'q01' and 'q99' lists ({exc})") from exc
        mask = np.asarray(data.get("mask", np.ones_like(q01, dtype=bool)), dtype=bool)
        return cls(q01, q99, mask)


@dataclass
class LoadedCheckpoint:
    model: DreamVLA
    config: DreamVLAConfig
    action_stats: NormStats
    proprio_stats: NormStats | None
    path: Path


def _refuse_pickles(path: Path) -> None:
    pickles = sorted(p.name for p in path.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        raise CheckpointError(
            f"{path} contains pickle files {pickles}: refusing to load them (unpickling runs "
            "arbitrary code); an official finetune output becomes a checkpoint without "
            "pickles with `dream-vla convert SRC DST`"
        )


def _backbone_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as exc:
            raise CheckpointError(f"{index}: not a safetensors index ({exc})") from exc
        files = sorted({path / name for name in weight_map.values()})
        missing = [f.name for f in files if not f.exists()]
        if missing:
            raise CheckpointError(f"{index} names shards that do not exist: {missing}")
        return files
    single = path / "model.safetensors"
    if not single.exists():
        raise CheckpointError(
            f"{path} has neither model.safetensors nor model.safetensors.index.json"
        )
    return [single]


def _read_tensors(files: list[Path]) -> dict[str, tuple[Path, torch.Size]]:
    """name -> (file, shape), without reading the data."""
    found: dict[str, tuple[Path, torch.Size]] = {}
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as handle:
                for key in handle.keys():  # noqa: SIM118 - safe_open has no __iter__
                    found[key] = (f, torch.Size(handle.get_slice(key).get_shape()))
        except Exception as exc:  # safetensors raises its own error types
            raise CheckpointError(f"{f}: not a readable safetensors file ({exc})") from exc
    return found


def _expected(model: DreamVLA) -> dict[str, dict[str, torch.Size]]:
    """Per file group: parameter name -> shape (persistent buffers included)."""
    groups: dict[str, dict[str, torch.Size]] = {"backbone": {}}
    for part in PART_FILES:
        if getattr(model, part) is not None:
            groups[part] = {}
    for name, tensor in model.state_dict().items():
        part = name.split(".", 1)[0]
        if part in PART_FILES:
            groups[part][name.split(".", 1)[1]] = tensor.shape
        else:
            groups["backbone"][name] = tensor.shape
    return groups


def adapter_base(path: Path) -> Path | None:
    """The base checkpoint of a LoRA adapter directory, or None for a full checkpoint."""
    adapter_cfg = path / "adapter_config.json"
    if not adapter_cfg.exists():
        return None
    try:
        base = json.loads(adapter_cfg.read_text())["base_model_name_or_path"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{adapter_cfg}: no base_model_name_or_path ({exc})") from exc
    if not isinstance(base, str) or not base:
        raise CheckpointError(f"{adapter_cfg}: base_model_name_or_path is empty")
    base_dir = (path / base).resolve()
    if not base_dir.is_dir():
        raise CheckpointError(
            f"{path} is a LoRA adapter whose base checkpoint {base_dir} does not exist"
        )
    if not (path / "adapter_model.safetensors").exists():
        raise CheckpointError(f"{path} has adapter_config.json but no adapter_model.safetensors")
    _refuse_pickles(base_dir)
    return base_dir


def merge_adapter(model: DreamVLA, path: Path) -> DreamVLA:
    """Apply the LoRA adapter in `path` to `model` and merge it into the weights."""
    from peft import PeftModel

    try:
        peft_model = PeftModel.from_pretrained(model, str(path), is_trainable=False)
    except Exception as exc:  # peft raises several kinds for a bad adapter
        raise CheckpointError(f"{path}: cannot apply the LoRA adapter ({exc})") from exc
    merged = peft_model.merge_and_unload()
    assert isinstance(merged, DreamVLA)
    return merged


def check_tensors(
    expected: dict[str, torch.Size], found: dict[str, tuple[Path, torch.Size]], label: str
) -> list[str]:
    """Problems (missing, unexpected, mis-shaped) of one file group, as phrases."""
    problems = []
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shapes = [
        f"{n}: checkpoint {tuple(found[n][1])} vs model {tuple(expected[n])}"
        for n in sorted(set(expected) & set(found))
        if found[n][1] != expected[n]
    ]
    if missing:
        problems.append(f"{label}: {len(missing)} missing keys, e.g. {missing[:5]}")
    if unexpected:
        problems.append(f"{label}: {len(unexpected)} unexpected keys, e.g. {unexpected[:5]}")
    if shapes:
        problems.append(f"{label}: {len(shapes)} shape mismatches: {shapes[:5]}")
    return problems


def read_group(
    found: dict[str, tuple[Path, torch.Size]], prefix: str = ""
) -> dict[str, torch.Tensor]:
    """Tensors of one file group, keys prefixed (e.g. 'action_head.')."""
    by_file: dict[Path, list[str]] = {}
    for name, (f, _) in found.items():
        by_file.setdefault(f, []).append(name)
    state: dict[str, torch.Tensor] = {}
    for f, names in by_file.items():
        with safe_open(str(f), framework="pt", device="cpu") as handle:
            for name in names:
                state[prefix + name] = handle.get_tensor(name)
    return state


def load_base_weights(model: DreamVLA, path: str | Path) -> list[str]:
    """Copy a checkpoint's weights into `model`, whose heads may differ (a new
    head, chunk length or action dimension for finetuning): the backbone must
    match exactly; each head or projector file is copied when its keys and
    shapes match and left as initialised otherwise. Returns the parts copied."""
    path = Path(path)
    _refuse_pickles(path)
    expected = _expected(model)
    found = _read_tensors(_backbone_files(path))
    problems = check_tensors(expected["backbone"], found, "backbone")
    if problems:
        raise CheckpointError(f"cannot use {path} as a base: " + "; ".join(problems))
    state = read_group(found)
    copied = ["backbone"]
    for part, filename in PART_FILES.items():
        f = path / filename
        if part in expected and f.exists():
            tensors = _read_tensors([f])
            if not check_tensors(expected[part], tensors, filename):
                state.update(read_group(tensors, part + "."))
                copied.append(part)
    with torch.no_grad():
        _, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected, unexpected
    return copied


def _config_data(path: Path) -> dict[str, Any]:
    cfg_file = path / "config.json"
    if not cfg_file.exists():
        raise CheckpointError(f"{path} has no config.json")
    try:
        data = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{cfg_file}: {exc}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{cfg_file}: not a JSON object")
    return data


def load_config(path: Path, unnorm_key: str = "") -> DreamVLAConfig:
    """The checkpoint's config; an official config.json (the published base) reads as
    a discrete model with the official token layout and decoding, its action
    dimension from the chosen statistics and the official LIBERO chunk of 8."""
    data = _config_data(path)
    try:
        if official.is_official_config(data):
            _, entry = _official_entry(path, data, unnorm_key)
            action_dim = len(entry["action"].get("q01", []))
            return official.config_from_official(
                data, "discrete", official.DEFAULT_CHUNK, action_dim, 0
            )
        return DreamVLAConfig.from_json_dict(data)
    except (ModelConfigError, official.OfficialLayoutError) as exc:
        raise CheckpointError(f"{path / 'config.json'}: {exc}") from exc


def _official_entry(path: Path, data: dict[str, Any], unnorm_key: str) -> tuple[str, dict]:
    stats, where = official.official_stats(path, data)
    try:
        return official.choose_stats(stats, unnorm_key or None, where)
    except official.OfficialLayoutError as exc:
        raise CheckpointError(str(exc)) from exc


def load_norm_stats(
    path: Path, cfg: DreamVLAConfig, unnorm_key: str = ""
) -> tuple[NormStats, NormStats | None]:
    """The action (and proprio) statistics: the checkpoint's own norm_stats.json, or
    for an official layout the `unnorm_key` entry of dataset_statistics.json or of
    config.json's norm_stats (the only one when there is one)."""
    stats_file = path / "norm_stats.json"
    if stats_file.exists():
        converted = _config_data(path).get("official", {}).get("unnorm_key", "")
        if unnorm_key and converted not in (unnorm_key, f"{unnorm_key}_no_noops"):
            raise CheckpointError(
                f"{path} has one set of statistics (norm_stats.json"
                + (f", converted from '{converted}'" if converted else "")
                + f"); unnorm_key '{unnorm_key}' chooses among an official checkpoint's "
                "datasets: leave it empty"
            )
        try:
            data = json.loads(stats_file.read_text())
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{stats_file}: invalid JSON ({exc})") from exc
        where = str(stats_file)
    else:
        config = _config_data(path)
        if not official.is_official_config(config):
            raise CheckpointError(
                f"{path} has no norm_stats.json: actions cannot be un-normalised without the "
                "q01/q99 statistics of the training data"
            )
        key, data = _official_entry(path, config, unnorm_key)
        where = f"{path} statistics '{key}'"
    if "action" not in data:
        raise CheckpointError(f"{where} lacks the 'action' statistics")
    action = NormStats.from_json(data["action"], f"{where} action")
    if action.q01.shape[0] != cfg.action.action_dim:
        raise CheckpointError(
            f"{where}: action stats have {action.q01.shape[0]} dimensions, the model "
            f"predicts {cfg.action.action_dim}"
        )
    proprio = None
    if cfg.action.proprio_dim > 0:
        if "proprio" not in data:
            raise CheckpointError(f"{where} lacks the 'proprio' statistics")
        proprio = NormStats.from_json(data["proprio"], f"{where} proprio")
        if proprio.q01.shape[0] != cfg.action.proprio_dim:
            raise CheckpointError(
                f"{where}: proprio stats have {proprio.q01.shape[0]} dimensions, the model "
                f"expects {cfg.action.proprio_dim}"
            )
    return action, proprio


def load_checkpoint(
    path: str | Path,
    dtype: str = "fp32",
    device: str = "cpu",
    attn_implementation: str | None = None,
    unnorm_key: str = "",
) -> LoadedCheckpoint:
    """Load a checkpoint directory; strict: raise CheckpointError naming every problem.
    `unnorm_key` chooses the dataset statistics of an official checkpoint that holds
    several (see load_norm_stats)."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint directory {path} does not exist")
    if dtype not in DTYPES:
        raise CheckpointError(f"dtype must be one of {sorted(DTYPES)}, got '{dtype}'")
    _refuse_pickles(path)
    cfg = load_config(path, unnorm_key)
    action_stats, proprio_stats = load_norm_stats(path, cfg, unnorm_key)
    attn = attn_implementation or default_attention(device)
    with torch.device("meta"):
        model = DreamVLA(cfg, attn)
    expected = _expected(model)
    base = adapter_base(path)
    sources: dict[str, dict[str, tuple[Path, torch.Size]]] = {
        "backbone": _read_tensors(_backbone_files(base or path))
    }
    problems: list[str] = []
    for part, filename in PART_FILES.items():
        if part in expected:
            f = path / filename
            if not f.exists():
                problems.append(f"missing file {filename} (the config's head needs it)")
                sources[part] = {}
            else:
                sources[part] = _read_tensors([f])
    for group, names in expected.items():
        label = "backbone" if group == "backbone" else PART_FILES[group]
        problems += check_tensors(names, sources.get(group, {}), label)
    if problems:
        raise CheckpointError(f"cannot load {path}: " + "; ".join(problems))

    model = model.to_empty(device=device)
    state: dict[str, torch.Tensor] = {}
    for group, found in sources.items():
        state.update(read_group(found, "" if group == "backbone" else group + "."))
    model.load_state_dict(state, strict=True, assign=False)
    reset_non_persistent_buffers(model)
    if base is not None:
        model = merge_adapter(model, path)
    model = model.to(device=device, dtype=DTYPES[dtype]).eval()
    return LoadedCheckpoint(model, cfg, action_stats, proprio_stats, path)


def reset_non_persistent_buffers(model: DreamVLA) -> None:
    """The rotary inverse frequencies are not saved (and were built on the meta
    device): recreate both rotary modules on the model's device."""
    device = model.lm_head.weight.device
    backbone_rotary = model.model.rotary_emb
    model.model.rotary_emb = type(backbone_rotary)(backbone_rotary.config).to(device)
    vision_rotary = model.visual.rotary_pos_emb
    model.visual.rotary_pos_emb = type(vision_rotary)(vision_rotary.config).to(device)


def default_attention(device: str) -> str:
    """flash_attention_2 on a GPU when the package is installed, else PyTorch SDPA."""
    if str(device).startswith("cuda"):
        try:
            import flash_attn  # noqa: F401

            return "flash_attention_2"
        except ImportError:
            pass
    return "sdpa"


def save_checkpoint(
    model: DreamVLA,
    path: str | Path,
    action_stats: NormStats,
    proprio_stats: NormStats | None = None,
    max_shard_bytes: int = 4 << 30,
) -> Path:
    """Write `model` in the published layout (sharded above `max_shard_bytes`)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    cfg = model.cfg
    (path / "config.json").write_text(json.dumps(cfg.to_json_dict(), indent=2))
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    parts: dict[str, dict[str, torch.Tensor]] = {p: {} for p in PART_FILES}
    backbone: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        head, rest = name.split(".", 1)
        if head in PART_FILES:
            parts[head][rest] = tensor
        else:
            backbone[name] = tensor
    for part, tensors in parts.items():
        if tensors:
            save_file(tensors, str(path / PART_FILES[part]), metadata={"format": "pt"})
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in backbone.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    if len(shards) == 1:
        save_file(shards[0], str(path / "model.safetensors"), metadata={"format": "pt"})
    else:
        weight_map = {}
        for i, shard in enumerate(shards, 1):
            fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, str(path / fname), metadata={"format": "pt"})
            weight_map.update({name: fname for name in shard})
        total = sum(t.numel() * t.element_size() for t in backbone.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    stats: dict[str, Any] = {"action": action_stats.to_json()}
    if proprio_stats is not None:
        stats["proprio"] = proprio_stats.to_json()
    (path / "norm_stats.json").write_text(json.dumps(stats, indent=2))
    return path
