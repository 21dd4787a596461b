"""`dream-vla demo`: the closed loop in the MuJoCo world with the shipped checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path

from dream_vla_ros.guard import guarded
from dream_vla_ros.paths import model_path

DEMO_CHECKPOINT = "touch_tiny"  # models/touch_tiny: trained by `dream-vla sim pipeline`


def add_parsers(sub) -> None:
    p = sub.add_parser("demo", help="the trained policy touching cubes in the MuJoCo world")
    p.add_argument("--seeds", type=int, default=5, help="layouts to try")
    p.add_argument("--out", default="demo_out", help="results, trajectories, GIF")
    p.add_argument("--checkpoint", default="", help=f"default: models/{DEMO_CHECKPOINT}")
    p.add_argument("--timeout", type=float, default=8.0, help="[s] per layout")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from dream_vla_ros.dds import DdsError
    from dream_vla_ros.evaluation.closed_loop import GraphError, evaluate
    from dream_vla_ros.model.checkpoint import CheckpointError
    from dream_vla_ros.ros.client import GraphClient

    ckpt = Path(args.checkpoint) if args.checkpoint else model_path(DEMO_CHECKPOINT)
    seeds, out = args.seeds, args.out
    print(
        f"dream-vla demo: 'touch the cube' in the MuJoCo world, {seeds} layouts, policy {ckpt}\n"
        "  graph sim_world: controller (CAN-level PiPER simulator) <- policy node (Dream-VLA, "
        "CPU) <- sim_world cameras (front + wrist, rendered from the measured joints)"
    )

    def body() -> int:
        summary = evaluate(GraphClient, ckpt, out, list(range(5000, 5000 + seeds)), args.timeout)
        policy, controller = summary["diagnostics"]["policy"], summary["diagnostics"]["controller"]
        print(
            f"demo: success {summary['success_rate']:.0%} over {seeds} layouts; inference p50 "
            f"{policy.get('inference_p50_ms', '?')} ms; controller {controller.get('mode', '?')}, "
            f"chunks accepted {controller.get('chunks_accepted', '?')} / rejected "
            f"{controller.get('chunks_rejected', '?')}, resets {summary['controller_resets']}\n"
            f"  {out}/results.json, {out}/trajectories.png, {out}/rollout.gif"
        )
        return 0

    return guarded("demo", (GraphError, DdsError, CheckpointError, OSError), body)
