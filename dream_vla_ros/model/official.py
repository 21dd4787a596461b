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

`model/convert.py` turns these into this project's layout and back.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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
OURS_ONLY = (
    "action_config",
    "base_vocab_size",
    "action_token_end",
    "image_size",
    "image_resize",
    "official",
)


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
                "with unnorm_key (--unnorm-key, or model.unnorm_key of the policy node or recipe)"
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


def platform_defaults() -> str:
    """The official platform constants, as a sentence for --help and the docs."""
    return "; ".join(
        f"{name}: chunk {c}, action dim {a}, proprio dim {p}"
        for name, (c, a, p) in PLATFORMS.items()
    )
