"""`dream-vla convert` and `dream-vla export`: official Dream-VLA checkpoints to this
project's layout and back (model/official.py describes the official layouts).

`convert` is the only code in the project that opens a pickle, and only with
`torch.load(weights_only=True)`; nothing that runs beside an arm calls it.
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

from dream_vla_ros.model.checkpoint import (
    PART_FILES,
    CheckpointError,
    NormStats,
    adapter_base,
    load_checkpoint,
    load_config,
)
from dream_vla_ros.model.config import DreamVLAConfig
from dream_vla_ros.model.official import (
    ACTION_TOKEN_BEGIN,
    DEFAULT_CHUNK,
    MODULES,
    OURS_ONLY,
    PROCESSOR_FILES,
    OfficialLayoutError,
    choose_stats,
    config_from_official,
    is_official_config,
    official_stats,
)

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
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise OfficialLayoutError(
            f"{f}: not a state dict that loads with weights_only ({first})"
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


def _backbone_names(src: Path) -> list[str]:
    """The merged model's safetensors files (and index)."""
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
    return files


def convert(src: str | Path, dst: str | Path, settings: ConvertSettings | None = None) -> Path:
    """An official checkpoint (published base or finetune output) -> a checkpoint in
    this project's layout at `dst`, with no pickle in it. Everything decided goes
    into the new config.json under "official"."""
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

    copied = _backbone_names(src)
    dst.mkdir(parents=True, exist_ok=True)
    try:
        for name in copied:
            shutil.copyfile(src / name, dst / name)
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
    # the official rotary embedding splits each head's frequencies into three M-RoPE
    # sections ([16, 24, 24] for the 7B's 128-wide heads); with the same position in
    # all three, as the official forward gives them, any split is the 1-D rotary
    # embedding this project computes, but the sections must fill the head
    half = cfg.hidden_size // cfg.num_attention_heads // 2
    side = half * 3 // 8
    out.update(
        model_type="dream-vla",
        architectures=["DreamVLAForActionPrediction"],
        vocab_size=cfg.vocab_size,
        n_action_bins=cfg.action.n_bins,
        norm_stats=norm_stats,
        mask_token_id=cfg.mask_token_id,
        mrope_section=[half - 2 * side, side, side],
        use_sliding_window=False,
        tie_word_embeddings=False,
    )
    return out


def export(src: str | Path, dst: str | Path, unnorm_key: str = "robot") -> Path:
    """A checkpoint of this project -> the official finetune layout at `dst`, which
    run_libero_eval_dream.py loads (config.json, weights, dataset_statistics.json,
    `{module}--latest_checkpoint.pt`, the processor's files). A converted checkpoint
    gives back its official config and statistics unchanged."""
    src, dst = Path(src), Path(dst)
    if dst.exists() and any(dst.iterdir()):
        raise OfficialLayoutError(f"{dst} exists and is not empty: choose a new folder")
    try:
        data = json.loads((src / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise OfficialLayoutError(f"{src} has no readable config.json ({exc})") from exc
    if is_official_config(data):
        raise OfficialLayoutError(f"{src} is already in the official layout")
    cfg = load_config(src)
    if adapter_base(src) is not None:
        raise OfficialLayoutError(
            f"{src} is a LoRA adapter: merge it first with `dream-vla merge {src} OUT`"
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
    if cfg.action.relative_dims:
        problems.append(
            f"its first {cfg.action.relative_dims} actions are offsets from the robot state, "
            "which the official code reads as absolute"
        )
    if cfg.image_size != 224:
        problems.append(f"it reads {cfg.image_size}-pixel images; the official code resizes to 224")
    if problems:
        raise OfficialLayoutError(f"{src} cannot run in the official code: " + "; ".join(problems))
    original = data.get("official", {})
    stats = json.loads((src / "norm_stats.json").read_text())
    dataset = original.get("unnorm_key") or unnorm_key  # a converted one keeps its own
    backbone = _backbone_names(src)
    dst.mkdir(parents=True, exist_ok=True)
    try:
        if "config" in original:
            official = original["config"]
        else:
            official = official_config(cfg, {dataset: stats})
        (dst / "config.json").write_text(json.dumps(official, indent=2))
        if (src / "dataset_statistics.json").is_file():
            shutil.copyfile(src / "dataset_statistics.json", dst / "dataset_statistics.json")
        else:
            statistics = json.dumps({dataset: stats}, indent=2)
            (dst / "dataset_statistics.json").write_text(statistics)
        for name in [*backbone, *PROCESSOR_FILES]:
            if (src / name).is_file():
                shutil.copyfile(src / name, dst / name)
        if not (dst / "generation_config.json").is_file():
            # the official from_pretrained reads one (DreamVLGenerationConfig); what
            # save_pretrained writes for a model config, the decoding settings
            # are predict_action's arguments
            generation = {"_from_model_config": True, "pad_token_id": cfg.pad_token_id}
            generation["use_cache"] = False
            (dst / "generation_config.json").write_text(json.dumps(generation, indent=2))
        names = original.get("module_files", {})
        for module, filename in PART_FILES.items():
            if (src / filename).is_file():
                target = names.get(module, f"{module}--latest_checkpoint.pt")
                torch.save(load_file(str(src / filename)), dst / target)
    except BaseException:
        shutil.rmtree(dst, ignore_errors=True)
        raise
    return dst
