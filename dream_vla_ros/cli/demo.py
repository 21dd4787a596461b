"""`dream-vla demo`: the closed loop in the MuJoCo world with the shipped checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path

from dream_vla_ros.guard import guarded
from dream_vla_ros.paths import model_path

# the shipped checkpoints (models/), each trained by `dream-vla sim pipeline --task T`
DEMO_CHECKPOINTS = {"touch": "touch_tiny", "place": "place_tiny"}
TIMEOUTS_S = {"touch": 8.0, "place": 20.0}
WORDS = {"touch": "touch the cube", "place": "put the cube in the bowl"}


def add_parsers(sub) -> None:
    p = sub.add_parser("demo", help="the trained policy in the MuJoCo world (touch or place)")
    p.add_argument("--task", choices=("touch", "place"), default="touch", help="the task")
    p.add_argument("--seeds", type=int, default=5, help="layouts to try")
    p.add_argument("--out", default="demo_out", help="results, trajectories, GIF")
    p.add_argument("--checkpoint", default="", help="default: models/touch_tiny | place_tiny")
    p.add_argument("--timeout", type=float, default=0.0, help="[s] per layout; 0: 8 | 20")
    p.add_argument(
        "--camera-offset",
        default="",
        metavar="DX,DY,DZ,ROLL,PITCH,YAW",
        help="front camera offset from its nominal pose (m, deg)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from dream_vla_ros.dds import DdsError
    from dream_vla_ros.evaluation.closed_loop import GraphError, evaluate
    from dream_vla_ros.model.checkpoint import CheckpointError
    from dream_vla_ros.ros.client import GraphClient

    task = args.task
    ckpt = Path(args.checkpoint) if args.checkpoint else model_path(DEMO_CHECKPOINTS[task])
    seeds, out = args.seeds, args.out
    print(
        f"dream-vla demo: '{WORDS[task]}' in the MuJoCo world, {seeds} layouts, policy {ckpt}\n"
        "  graph sim_world: controller (CAN-level PiPER simulator) <- policy node (Dream-VLA, "
        "CPU) <- sim_world cameras (front + wrist, rendered from the measured joints)"
    )

    def body() -> int:
        summary = evaluate(
            GraphClient,
            ckpt,
            out,
            list(range(5000, 5000 + seeds)),
            args.timeout or TIMEOUTS_S[task],
            task=task,
            camera_offset=args.camera_offset,
        )
        policy, controller = summary["diagnostics"]["policy"], summary["diagnostics"]["controller"]
        print(
            f"demo: success {summary['success_rate']:.0%} over {seeds} layouts; inference p50 "
            f"{policy.get('inference_p50_ms', '?')} ms; controller {controller.get('mode', '?')}, "
            f"chunks accepted {controller.get('chunks_accepted', '?')} / rejected "
            f"{controller.get('chunks_rejected', '?')}, resets {summary['controller_resets']}, "
            f"limited ticks {summary['limited_ticks']['share']:.0%}\n"
            f"  {out}/results.json, {out}/trajectories.png, {out}/rollout.gif"
        )
        return 0

    return guarded("demo", (GraphError, DdsError, CheckpointError, OSError), body)
