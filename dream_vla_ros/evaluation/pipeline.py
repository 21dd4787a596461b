"""`dream-vla sim pipeline`: collect -> dataset build -> finetune -> closed-loop
evaluation, all under one output folder, with the time of each stage."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dream_vla_ros.evaluation.closed_loop import collect, evaluate
from dream_vla_ros.evaluation.driver import Connect


@dataclass(frozen=True)
class PipelineSettings:
    recipe: str
    overrides: tuple[str, ...] = ()
    episodes: int = 60
    seed0: int = 1000
    per_layout: int = 3
    random_starts: int = 0
    seeds: tuple[int, ...] = tuple(range(5000, 5020))
    timeout_s: float = 8.0
    camera: tuple[int, int] = (320, 240)
    # The dataset's rate is the cameras' (10 Hz). On a busy 2-core host the renderer
    # stalls for up to ~0.7 s at times; with 0.3 s / 0.2 s tolerances a pipeline run
    # lost 10 of 36 episodes to such gaps.
    fps: int = 10
    image_tolerance_s: float = 0.6
    state_tolerance_s: float = 0.3
    progress: bool = True


def run_pipeline(connect: Connect, out_dir: str | Path, s: PipelineSettings) -> dict[str, Any]:
    from dream_vla_ros.data.build import BuildSettings, build_dataset
    from dream_vla_ros.finetune.recipe import load_recipe
    from dream_vla_ros.finetune.trainer import Trainer

    out = Path(out_dir)
    overrides = [f"data.dataset={out / 'dataset'}", f"output_dir={out / 'run'}", *s.overrides]
    recipe = load_recipe(s.recipe, overrides)  # a bad recipe stops it before collection
    start = time.monotonic()
    times: dict[str, float] = {}
    expert = collect(
        connect,
        out / "episodes",
        s.episodes,
        s.seed0,
        s.camera,
        per_layout=s.per_layout,
        random_starts=s.random_starts,
    )
    times["collect_s"] = time.monotonic() - start
    t = time.monotonic()
    settings = BuildSettings(
        fps=s.fps, image_tolerance_s=s.image_tolerance_s, state_tolerance_s=s.state_tolerance_s
    )
    report = build_dataset(out / "episodes", out / "dataset", settings)
    print(report.summary())
    times["build_s"] = time.monotonic() - t
    t = time.monotonic()
    result = Trainer(recipe, progress=s.progress).run()
    times["train_s"] = time.monotonic() - t
    t = time.monotonic()
    seeds = list(s.seeds)
    summary = evaluate(connect, result.final, out / "eval", seeds, s.timeout_s, s.camera)
    times["evaluate_s"] = time.monotonic() - t
    times["total_s"] = time.monotonic() - start
    final = {
        "expert_success_rate": expert["expert_success_rate"],
        "policy_success_rate": summary["success_rate"],
        "episodes": s.episodes,
        "per_layout": s.per_layout,
        "random_starts": s.random_starts,
        "seeds": len(seeds),
        "checkpoint": str(result.final),
        **{k: round(v, 1) for k, v in times.items()},
    }
    (out / "pipeline.json").write_text(json.dumps(final, indent=2))
    print(
        f"pipeline: expert {final['expert_success_rate']:.0%}, policy "
        f"{final['policy_success_rate']:.0%} over {len(seeds)} seeds, "
        f"{times['total_s'] / 60:.1f} min (collect {times['collect_s']:.0f} s, build "
        f"{times['build_s']:.0f} s, train {times['train_s']:.0f} s, evaluate "
        f"{times['evaluate_s']:.0f} s); results in {out}"
    )
    return final
