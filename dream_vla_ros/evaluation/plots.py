"""Pictures of closed-loop results: fingertip paths from above, a rollout GIF."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dream_vla_ros.sim.place import BOWL_RADIUS_M, sample_place_layout
from dream_vla_ros.sim.task import sample_layout

BOWL_RGB = {"yellow": (0.85, 0.75, 0.1), "purple": (0.55, 0.2, 0.7)}


def plot_trajectories(rollouts: Sequence, path: Path, task: str = "touch") -> None:
    """One panel per rollout (`seed`, `success`, `tip_path` [(x, y, z), ...]): the
    layout's cubes (and bowls: the place task, its cubes where the layout put them)
    and the fingertip's path seen from above (x forward, y left)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(rollouts)
    cols = min(5, max(1, n))
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows), squeeze=False)
    for ax, r in zip(axes.ravel(), rollouts):
        if task == "place":
            place = sample_place_layout(r.seed)
            cubes, title = place.cubes, f"{place.cube} -> {place.bowl}"
            for colour, centre in place.bowls.items():
                ax.add_patch(
                    plt.Circle(
                        (centre[1], centre[0]), BOWL_RADIUS_M, color=BOWL_RGB[colour], alpha=0.5
                    )
                )
        else:
            layout = sample_layout(r.seed)
            cubes, title = layout.cubes, layout.target
        for colour, centre in cubes.items():
            ax.add_patch(
                plt.Rectangle(
                    (centre[1] - 0.02, centre[0] - 0.02), 0.04, 0.04, color=colour, alpha=0.8
                )
            )
        if r.tip_path:
            tip = np.array(r.tip_path)
            ax.plot(tip[:, 1], tip[:, 0], "k-", lw=1)
        ax.set_xlim(-0.25, 0.25)
        ax.set_ylim(0.1, 0.45)
        ax.set_aspect("equal")
        ax.set_title(f"{r.seed}: {title} {'ok' if r.success else 'x'}", fontsize=9)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    fig.suptitle("fingertip paths seen from above (x forward, y left)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def write_gif(frames: Sequence[np.ndarray], path: Path, every: int = 2) -> None:
    """Every `every`-th RGB frame (H, W, 3) as a looping GIF at 5 frames per second."""
    from PIL import Image

    images = [Image.fromarray(f) for f in frames[::every]]
    images[0].save(path, save_all=True, append_images=images[1:], duration=200, loop=0)
