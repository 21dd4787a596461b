"""The official Dream-VLA layouts (DreamLM/Dream-VLX) and this project's reading of them.

The published base checkpoint: `config.json` (a `DreamVLAConfig` with
`n_action_bins` and `norm_stats` keyed by dataset name), safetensors weights
(`visual.*`, `model.*`, `projector.*`, `lm_head.*`, the names this project uses),
the processor's files (tokenizer, `preprocessor_config.json`, chat template).

The official finetuning script (`vla-scripts/finetune_dream.py`) writes the same plus
`dataset_statistics.json` ({dataset: {"action": {...}, "proprio": {...}}}), a
`lora_adapter/` folder, the merged weights, and each extra module as a pickled
state dict `{module}--{step}_checkpoint.pt` (or `--latest_checkpoint.pt`), keys
prefixed `module.` by DDP: `action_head`, `proprio_projector`,
`noisy_action_projector`. Chunk length and action dimension are platform constants
of the official code (`prismatic/vla/constants.py`), not in any file.

Facts the official code hard-codes and this project reproduces:
- action tokens are the ids above 151666 (`ACTION_TOKEN_BEGIN_IDX`); a token maps to
  a bin through `len(tokenizer)` (151923 with the 256 action tokens the finetuning
  adds): `action_token_end` in this project's config;
- the discrete decoder masks the two suffix positions too and decodes over the whole
  vocabulary (`action.decoding: official`);
- the image processor resizes with PIL's bicubic (`image_resize: pil`).

`convert` (official -> ours) is the only code that opens a pickle, and only with
`torch.load(weights_only=True)`; `export` (ours -> official) writes what the
official evaluation (`run_libero_eval_dream.py`) loads.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from dream_vla_ros.model.config import DreamVLAConfig, ModelConfigError

ACTION_TOKEN_BEGIN = 151666  # official modeling_dreamvl.ACTION_TOKEN_BEGIN_IDX
# the official platform constants: (NUM_ACTIONS_CHUNK, ACTION_DIM, PROPRIO_DIM)
PLATFORMS = {"libero": (8, 7, 8), "aloha": (25, 14, 14), "bridge": (5, 7, 7), "rt1": (5, 7, 7)}
DEFAULT_CHUNK, DEFAULT_ACTION_DIM = PLATFORMS["libero"][:2]
MODULES = ("action_head", "proprio_projector", "noisy_action_projector")
PROCESSOR_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.json",
    "chat_template.jinja",
    "preprocessor_config.json",
    "processor_config.json",
    "generation_config.json",
)
# this project's config keys that are not the official config's
OURS_ONLY = ("action_config", "base_vocab_size", "action_token_end", "image_resize", "official")


class OfficialLayoutError(ValueError):
    """An official checkpoint that cannot be read as asked; the message says why and
    what to do."""


def is_official_config(data: dict[str, Any]) -> bool:
    """A config.json written by the official code (no action_config of ours)."""
    return "action_config" not in data


def choose_stats(norm_stats: Any, unnorm_key: str | None, where: str) -> tuple[str, dict[str, Any]]:
    """(key, entry) of the dataset statistics to use, as the official code picks them:
    the only dataset when there is one and no key; else the key, or the key with
    "_no_noops" appended (run_libero_eval_dream.check_unnorm_key)."""
    if not isinstance(norm_stats, dict) or not norm_stats:
        raise OfficialLayoutError(f"{where} holds no dataset statistics")
    keys = sorted(norm_stats)
    if not unnorm_key:
        if len(keys) > 1:
            raise OfficialLayoutError(
                f"{where} holds the statistics of {len(keys)} datasets {keys}: choose one "
                "with unnorm_key"
            )
        unnorm_key = keys[0]
    elif unnorm_key not in norm_stats and f"{unnorm_key}_no_noops" in norm_stats:
        unnorm_key = f"{unnorm_key}_no_noops"
    if unnorm_key not in norm_stats:
        raise OfficialLayoutError(
            f"unnorm_key '{unnorm_key}' is not in {where}; the available keys are {keys}"
        )
    entry = norm_stats[unnorm_key]
    if not isinstance(entry, dict) or "action" not in entry:
        raise OfficialLayoutError(f"{where}: '{unnorm_key}' has no 'action' statistics")
    return unnorm_key, entry


def official_stats(path: Path, data: dict[str, Any]) -> tuple[Any, str]:
    """The statistics an official checkpoint carries and where they were found:
    dataset_statistics.json when present (the official evaluation replaces
    norm_stats with it), else config.json's norm_stats."""
    file = path / "dataset_statistics.json"
    if file.exists():
        try:
            return json.loads(file.read_text()), str(file)
        except json.JSONDecodeError as exc:
            raise OfficialLayoutError(f"{file}: invalid JSON ({exc})") from exc
    return data.get("norm_stats"), f"{path / 'config.json'} norm_stats"


def config_from_official(
    data: dict[str, Any],
    head: str,
    chunk: int,
    action_dim: int,
    proprio_dim: int,
) -> DreamVLAConfig:
    """This project's config for an official config.json and the decisions that the
    files cannot say (head, chunk, dimensions)."""
    if data.get("rope_scaling"):
        raise OfficialLayoutError(
            f"config.json has rope_scaling {data['rope_scaling']}, which this project does "
            "not implement (the published model has none)"
        )
    n_bins = int(data.get("n_action_bins") or 256)
    ours = {k: v for k, v in data.items() if k != "action_config"}
    ours["base_vocab_size"] = data.get("vocab_size")
    ours["action_token_end"] = ACTION_TOKEN_BEGIN + 1 + n_bins
    ours["image_resize"] = "pil"
    ours["action_config"] = {
        "head": head,
        "chunk": chunk,
        "action_dim": action_dim,
        "proprio_dim": proprio_dim,
        "n_bins": n_bins,
        "decoding": "official",
        "head_hidden": 0,
    }
    try:
        return DreamVLAConfig.from_json_dict(ours)
    except ModelConfigError as exc:
        raise OfficialLayoutError(f"config.json: {exc}") from exc


# ------------------------------------------------------------------------- convert


@dataclass(frozen=True)
class ConvertSettings:
    head: str = ""  # discrete | l1 | flow; "" = from the module files
    chunk: int = DEFAULT_CHUNK
    action_dim: int = 0  # 0 = from the statistics
    unnorm_key: str = ""


def _module_files(src: Path) -> dict[str, Path]:
    """module -> its one .pt file (`{module}--*checkpoint.pt`)."""
    found: dict[str, Path] = {}
    pattern = re.compile(r"^(?P<module>[a-z_]+)--(\d+|latest)_checkpoint\.pt$")
    for f in sorted(src.iterdir()):
        m = pattern.match(f.name)
        if not m:
            continue
        module = m.group("module")
        if module not in MODULES:
            raise OfficialLayoutError(
                f"{f}: a checkpoint of '{module}', which this project does not have (it "
                f"reads {', '.join(MODULES)}); FiLM vision backbones are not supported"
            )
        if module in found:
            raise OfficialLayoutError(
                f"{src} holds two checkpoints of {module}: {found[module].name} and {f.name}; "
                "keep the one to convert"
            )
        found[module] = f
    return found


def _read_module(f: Path) -> dict[str, torch.Tensor]:
    """A module's state dict, unpickled with weights_only (tensors and plain
    containers only), DDP's `module.` prefix removed."""
    try:
        state = torch.load(f, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, ...
        raise OfficialLayoutError(
            f"{f}: not a state dict that loads with weights_only ({exc})"
        ) from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise OfficialLayoutError(f"{f}: not a state dict of tensors")
    return {k.removeprefix("module."): v.contiguous() for k, v in state.items()}


def head_from_modules(modules: dict[str, dict[str, torch.Tensor]]) -> str | None:
    """The head the module files describe, or None when they do not say."""
    head = modules.get("action_head")
    if head is None:
        return None if "noisy_action_projector" in modules else "discrete"
    keys = set(head)
    if any(k.startswith("flow_predictor.") for k in keys):
        return "flow"
    if any(k.startswith("model.") for k in keys):
        # L1 regression; a DDIM diffusion head saves the same keys (its own loader
        # renames them), so a noisy action projector beside it makes it ambiguous
        return None if "noisy_action_projector" in modules else "l1"
    return None


def _copy_backbone(src: Path, dst: Path) -> list[str]:
    """The merged model's safetensors files, copied as they are."""
    index = src / "model.safetensors.index.json"
    if index.exists():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        files = [index.name, *names]
    elif (src / "model.safetensors").exists():
        files = ["model.safetensors"]
    else:
        raise OfficialLayoutError(
            f"{src} has no model.safetensors (the merged model): merge the LoRA adapter "
            "into the base first (finetune_dream.py does with merge_lora_during_training)"
        )
    for name in files:
        shutil.copyfile(src / name, dst / name)
    return files


def convert(src: str | Path, dst: str | Path, settings: ConvertSettings | None = None) -> Path:
    """An official checkpoint (published base or finetune output) -> a checkpoint in
    this project's layout at `dst`, with no pickle in it. Everything decided goes
    into the new config.json under "official"."""
    from dream_vla_ros.model.checkpoint import (
        PART_FILES,
        CheckpointError,
        NormStats,
        load_checkpoint,
    )

    s = settings or ConvertSettings()
    src, dst = Path(src), Path(dst)
    if not (src / "config.json").is_file():
        raise OfficialLayoutError(f"{src} has no config.json: not a checkpoint directory")
    if dst.exists() and any(dst.iterdir()):
        raise OfficialLayoutError(f"{dst} exists and is not empty: choose a new folder")
    try:
        data = json.loads((src / "config.json").read_text())
    except json.JSONDecodeError as exc:
        raise OfficialLayoutError(f"{src / 'config.json'}: invalid JSON ({exc})") from exc
    if not is_official_config(data):
        raise OfficialLayoutError(f"{src} is already in this project's layout")
    files = _module_files(src)
    modules = {name: _read_module(f) for name, f in files.items()}
    found_head = head_from_modules(modules)
    head = s.head or found_head
    if head is None:
        raise OfficialLayoutError(
            f"the module files of {src} do not say which head they are "
            f"({sorted(files)}): give --head (l1, flow or discrete)"
        )
    if head not in ("discrete", "l1", "flow"):
        raise OfficialLayoutError(f"--head must be discrete, l1 or flow, got '{head}'")
    if s.head and "action_head" in modules and found_head and s.head != found_head:
        raise OfficialLayoutError(
            f"--head {s.head} does not match the module files of {src}, which are a "
            f"{found_head} head"
        )
    needed = {
        "discrete": (),
        "l1": ("action_head",),
        "flow": ("action_head", "noisy_action_projector"),
    }
    missing = [m for m in needed[head] if m not in modules]
    if missing:
        raise OfficialLayoutError(
            f"{src} has no {missing[0]}--*_checkpoint.pt, which a {head} head needs"
        )
    extra = [m for m in modules if m not in needed[head] and m != "proprio_projector"]
    if extra:
        raise OfficialLayoutError(f"{src} has {extra[0]} files, which a {head} head does not use")

    stats_data, where = official_stats(src, data)
    key, entry = choose_stats(stats_data, s.unnorm_key or None, where)
    try:
        action_stats = NormStats.from_json(entry["action"], f"{where} {key} action")
        proprio_stats = None
        if "proprio_projector" in modules:
            if "proprio" not in entry:
                raise OfficialLayoutError(f"{where}: '{key}' has no proprio statistics")
            proprio_stats = NormStats.from_json(entry["proprio"], f"{where} {key} proprio")
    except CheckpointError as exc:
        raise OfficialLayoutError(str(exc)) from exc
    action_dim = s.action_dim or action_stats.q01.shape[0]
    if action_stats.q01.shape[0] != action_dim:
        raise OfficialLayoutError(
            f"{where}: '{key}' has {action_stats.q01.shape[0]} action dimensions, "
            f"--action-dim is {action_dim}"
        )
    proprio_dim = 0 if proprio_stats is None else proprio_stats.q01.shape[0]
    cfg = config_from_official(data, head, s.chunk, action_dim, proprio_dim)

    dst.mkdir(parents=True, exist_ok=True)
    try:
        copied = _copy_backbone(src, dst)
        for name in PROCESSOR_FILES:
            if (src / name).is_file():
                shutil.copyfile(src / name, dst / name)
        if (src / "dataset_statistics.json").is_file():
            shutil.copyfile(src / "dataset_statistics.json", dst / "dataset_statistics.json")
        for module, tensors in modules.items():
            save_file(tensors, str(dst / PART_FILES[module]), metadata={"format": "pt"})
        stats: dict[str, Any] = {"action": action_stats.to_json()}
        if proprio_stats is not None:
            stats["proprio"] = proprio_stats.to_json()
        (dst / "norm_stats.json").write_text(json.dumps(stats, indent=2))
        out = cfg.to_json_dict()
        out["official"] = {
            "config": data,
            "unnorm_key": key,
            "statistics_from": Path(where.split(" ")[0]).name,
            "module_files": {m: f.name for m, f in files.items()},
            "backbone_files": copied,
            "decided": {"head": head, "chunk": s.chunk, "action_dim": action_dim},
        }
        (dst / "config.json").write_text(json.dumps(out, indent=2))
        load_checkpoint(dst)  # every key and shape checked before the folder is kept
    except (CheckpointError, OfficialLayoutError) as exc:
        shutil.rmtree(dst, ignore_errors=True)
        raise OfficialLayoutError(f"converting {src}: {exc}") from exc
    except BaseException:
        shutil.rmtree(dst, ignore_errors=True)
        raise
    return dst


# -------------------------------------------------------------------------- export


def official_config(cfg: DreamVLAConfig, norm_stats: dict[str, Any]) -> dict[str, Any]:
    """The official config.json for a model of this project."""
    out = {k: v for k, v in cfg.to_json_dict().items() if k not in OURS_ONLY}
    out.pop("action_config", None)
    out.update(
        model_type="dream-vla",
        architectures=["DreamVLAForActionPrediction"],
        vocab_size=cfg.vocab_size,
        n_action_bins=cfg.action.n_bins,
        norm_stats=norm_stats,
        mask_token_id=cfg.mask_token_id,
    )
    return out


def export(src: str | Path, dst: str | Path, unnorm_key: str = "robot") -> Path:
    """A checkpoint of this project -> the official finetune layout at `dst`, which
    run_libero_eval_dream.py loads (config.json, weights, dataset_statistics.json,
    `{module}--latest_checkpoint.pt`, the processor's files). A converted checkpoint
    gives back its official config and statistics unchanged."""
    from dream_vla_ros.model.checkpoint import PART_FILES, adapter_base, load_config

    src, dst = Path(src), Path(dst)
    if dst.exists() and any(dst.iterdir()):
        raise OfficialLayoutError(f"{dst} exists and is not empty: choose a new folder")
    cfg = load_config(src)
    if adapter_base(src) is not None:
        raise OfficialLayoutError(
            f"{src} is a LoRA adapter: merge it first (dream-vla train writes merged "
            "checkpoints with training.merge_lora)"
        )
    problems = []
    if cfg.im_end_token_id != 151645 or cfg.newline_token_id != 198:
        problems.append(
            "its special tokens are not Qwen2's (the official code hard-codes 151645, 198)"
        )
    if (
        cfg.action.head == "discrete"
        and cfg.action_token_end != ACTION_TOKEN_BEGIN + 1 + cfg.action.n_bins
    ):
        problems.append("its action tokens are not at the official ids 151667..151922")
    if cfg.vocab_size <= ACTION_TOKEN_BEGIN + cfg.action.n_bins:
        problems.append(f"its vocabulary ({cfg.vocab_size}) is smaller than the official ids")
    if cfg.action.clock_input:
        problems.append(
            "its proprio token carries the episode clock, which the official code does not feed"
        )
    if problems:
        raise OfficialLayoutError(f"{src} cannot run in the official code: " + "; ".join(problems))
    data = json.loads((src / "config.json").read_text())
    original = data.get("official", {})
    stats = json.loads((src / "norm_stats.json").read_text())
    dst.mkdir(parents=True, exist_ok=True)
    try:
        if "config" in original:
            official = original["config"]
        else:
            official = official_config(cfg, {unnorm_key: stats})
        (dst / "config.json").write_text(json.dumps(official, indent=2))
        if (src / "dataset_statistics.json").is_file():
            shutil.copyfile(src / "dataset_statistics.json", dst / "dataset_statistics.json")
        else:
            (dst / "dataset_statistics.json").write_text(json.dumps({unnorm_key: stats}, indent=2))
        for name in ("model.safetensors", "model.safetensors.index.json"):
            if (src / name).is_file():
                shutil.copyfile(src / name, dst / name)
        index = src / "model.safetensors.index.json"
        if index.is_file():
            for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
                shutil.copyfile(src / shard, dst / shard)
        for name in PROCESSOR_FILES:
            if (src / name).is_file():
                shutil.copyfile(src / name, dst / name)
        names = original.get("module_files", {})
        for module, filename in PART_FILES.items():
            if (src / filename).is_file():
                target = names.get(module, f"{module}--latest_checkpoint.pt")
                torch.save(load_file(str(src / filename)), dst / target)
    except BaseException:
        shutil.rmtree(dst, ignore_errors=True)
        raise
    return dst


def platform_defaults() -> str:
    """The official platform constants, as a sentence for --help and the docs."""
    return "; ".join(
        f"{name}: chunk {c}, action dim {a}, proprio dim {p}"
        for name, (c, a, p) in PLATFORMS.items()
    )
