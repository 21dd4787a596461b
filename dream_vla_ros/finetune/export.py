"""`dream-vla merge`: a LoRA checkpoint -> a self-contained checkpoint with the
adapters merged into the weights (no base folder needed, the published layout)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from dream_vla_ros.model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

CARRIED = ("tokenizer.json", "recipe.yaml")


def merge_checkpoint(checkpoint: str | Path, out_dir: str | Path) -> Path:
    src, out = Path(checkpoint), Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise CheckpointError(f"output folder {out} exists and is not empty")
    ckpt = load_checkpoint(src)  # merges a LoRA adapter; a full checkpoint loads as it is
    save_checkpoint(ckpt.model, out, ckpt.action_stats, ckpt.proprio_stats)
    for name in CARRIED:
        if (src / name).exists():
            shutil.copy2(src / name, out / name)
    info_file = src / "training.json"
    info = json.loads(info_file.read_text()) if info_file.exists() else {}
    info.update({"merged_from": str(src.resolve()), "adapter": "merged"})
    (out / "training.json").write_text(json.dumps(info, indent=2))
    return out
