"""What training reports: `metrics.jsonl` (one line per log and validation),
`curves.png`, and the one-line summary at the end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def append_metrics(out: Path, record: dict[str, Any]) -> None:
    with (out / "metrics.jsonl").open("a") as f:
        f.write(json.dumps(record) + "\n")


def truncate_metrics(out: Path, start_step: int) -> None:
    """A resumed run drops the lines past its starting step (they are redone)."""
    path = out / "metrics.jsonl"
    if not path.exists():
        return
    keep = [
        line
        for line in path.read_text().splitlines()
        if line.strip() and json.loads(line).get("step", 0) <= start_step
    ]
    path.write_text("".join(line + "\n" for line in keep))


def plot_curves(
    losses: list[tuple[int, float]], validations: list[dict[str, Any]], head: str, path: Path
) -> Path:
    """Training loss, validation joint MAE, and MAE by horizon step (first and last)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    if losses:
        steps, values = zip(*losses)
        axes[0].plot(steps, values, lw=0.8, label="loss")
        axes[0].set_yscale("log")
    axes[0].set_xlabel("step")
    axes[0].set_title(f"training loss ({head})")
    vals = [v for v in validations if v]
    if vals:
        axes[1].plot([v["step"] for v in vals], [v["joint_mae"] for v in vals], "o-")
        axes[2].plot(
            np.arange(1, len(vals[-1]["joint_mae_by_step"]) + 1),
            vals[-1]["joint_mae_by_step"],
            "o-",
            label=f"step {vals[-1]['step']}",
        )
        if len(vals) > 1:
            axes[2].plot(
                np.arange(1, len(vals[0]["joint_mae_by_step"]) + 1),
                vals[0]["joint_mae_by_step"],
                "o--",
                label=f"step {vals[0]['step']}",
            )
        axes[2].legend()
    axes[1].set_xlabel("step")
    axes[1].set_title(f"{vals[-1]['split'] if vals else 'val'} joint MAE (rad)")
    axes[2].set_xlabel("horizon step")
    axes[2].set_title("joint MAE by horizon step (rad)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def summary_line(
    name: str,
    steps: int,
    seconds: float,
    samples_per_s: float,
    losses: list[tuple[int, float]],
    validations: list[dict[str, Any]],
    final: Path,
) -> str:
    parts = [f"train: {name}: {steps} steps in {seconds:.0f} s"]
    parts.append(f"{samples_per_s:.1f} samples/s")
    if losses:
        parts.append(f"loss {losses[0][1]:.4g} -> {losses[-1][1]:.4g}")
    if validations:
        v = validations[-1]
        by_step = v["joint_mae_by_step"]
        parts.append(
            f"{v['split']} joint MAE {v['joint_mae']:.4f} rad "
            f"(step 1 {by_step[0]:.4f}, step {len(by_step)} {by_step[-1]:.4f})"
        )
    parts.append(f"checkpoint {final}")
    return ", ".join(parts)
