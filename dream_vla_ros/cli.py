"""The `dream-vla` command.

dream-vla demo [--seeds N] [--out DIR] [--checkpoint DIR]
    the closed loop in the MuJoCo world (controller with the CAN-level arm simulator,
    cameras, policy with the shipped checkpoint) on N "touch the cube" layouts
dream-vla launch GRAPH [arg:=value ...] [--print]
    run a node graph (sim | bringup) without ros2 launch; --print shows the commands
dream-vla launch
    list the graphs and their arguments
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from dream_vla_ros.launch_graph import GRAPHS, LaunchError, graph, node_command, parse_arguments
from dream_vla_ros.launcher import launch
from dream_vla_ros.paths import config_path, model_path

DEMO_CHECKPOINT = "touch_tiny"  # models/touch_tiny: trained by `dream-vla sim pipeline`


def demo(seeds: int, out: str, checkpoint: str, timeout_s: float) -> int:
    """The closed loop in the MuJoCo world with the shipped checkpoint."""
    from dream_vla_ros.ros.closed_loop import ClosedLoopError, evaluate

    ckpt = Path(checkpoint) if checkpoint else model_path(DEMO_CHECKPOINT)
    print(
        f"dream-vla demo: 'touch the cube' in the MuJoCo world, {seeds} layouts, policy {ckpt}\n"
        "  graph sim_world: controller (CAN-level PiPER simulator) <- policy node (Dream-VLA, "
        "CPU) <- sim_world cameras (front + wrist, rendered from the measured joints)"
    )

    def body() -> int:
        summary = evaluate(ckpt, out, list(range(5000, 5000 + seeds)), timeout_s)
        policy, controller = summary["diagnostics"]["policy"], summary["diagnostics"]["controller"]
        print(
            f"demo: success {summary['success_rate']:.0%} over {seeds} layouts; inference p50 "
            f"{policy.get('inference_p50_ms', '?')} ms; controller {controller.get('mode', '?')}, "
            f"chunks accepted {controller.get('chunks_accepted', '?')} / rejected "
            f"{controller.get('chunks_rejected', '?')}, resets {summary['controller_resets']}\n"
            f"  {out}/results.json, {out}/trajectories.png, {out}/rollout.gif"
        )
        return 0

    return _guarded("demo", (ClosedLoopError,), body)


def _list_graphs() -> None:
    for g in GRAPHS.values():
        print(f"{g.name}: {g.description}\n  nodes: {', '.join(n.name for n in g.nodes)}")
        for arg in g.arguments:
            choices = f" [{'|'.join(arg.choices)}]" if arg.choices else ""
            print(f"  {arg.name}:={arg.default!r}{choices}  {arg.description}")


def _pairs(words: list[str], what: str) -> tuple[tuple[str, str], ...]:
    out = []
    for word in words:
        key, sep, value = word.partition("=")
        if not sep or not key or not value:
            raise ValueError(f"{what} '{word}' is not KEY=VALUE")
        out.append((key, value))
    return tuple(out)


def _data_command(args: argparse.Namespace) -> int:
    from dream_vla_ros.data.bags import BagError
    from dream_vla_ros.data.episode import EpisodeError
    from dream_vla_ros.data.lerobot import DatasetError
    from dream_vla_ros.data.video import VideoError

    errors: tuple[type[BaseException], ...] = (
        BagError,
        EpisodeError,
        DatasetError,
        VideoError,
        ValueError,
        OSError,
    )
    if args.command == "eval-bag":
        from dream_vla_ros.model.checkpoint import CheckpointError

        errors += (CheckpointError,)

    try:
        if args.command == "dataset" and args.action == "build":
            from dream_vla_ros.data.build import BuildSettings, build_dataset

            settings = BuildSettings(
                fps=args.fps,
                state_topic=args.state_topic,
                action_topic=args.action_topic,
                cameras=_pairs(args.camera, "--camera"),
                state_tolerance_s=args.state_tolerance,
                image_tolerance_s=args.image_tolerance,
                include="all" if args.all else "success",
                typestore=args.typestore,
                joint_map=_pairs(args.joint_map, "--joint-map"),
                codec=args.codec,
            )
            print(build_dataset(args.episodes_dir, args.out_dir, settings).summary())
            return 0
        if args.command == "dataset":
            from dream_vla_ros.data.episode import list_episodes, needs_recovery, recover_episode

            path = Path(args.path)
            folders = [path] if (path / "episode.json").is_file() else list_episodes(path)
            todo = [f for f in folders if needs_recovery(f)]
            for folder in todo:
                print(f"{folder.name}: {recover_episode(folder).note}")
            print(f"{len(todo)} of {len(folders)} episodes needed recovery")
            return 0
        if args.command == "play":
            from dream_vla_ros.data.replay import PlaySettings
            from dream_vla_ros.ros.player import play

            settings = PlaySettings(
                rate=args.rate,
                start_offset_s=args.start_offset,
                loop=args.loop,
                topics=tuple(args.topics),
                exclude=tuple(args.exclude),
                typestore=args.typestore,
            )
            n = play(args.bag, settings, wait_for_subscribers_s=args.wait_for_subscribers)
            print(f"play: {n} messages published")
            return 0
        from dream_vla_ros.evaluation.offline import EvalSettings, evaluate_bag
        from dream_vla_ros.policy.policy import Policy

        settings = EvalSettings(
            instruction=args.instruction,
            cameras=_pairs(args.camera, "--camera"),
            every_s=args.every,
            max_predictions=args.max_predictions,
            typestore=args.typestore,
        )
        policy = Policy.from_checkpoint(args.checkpoint, args.dtype, args.device)
        out = Path(args.out) if args.out else Path(args.bag) / "eval"
        summary = evaluate_bag(args.bag, policy, out, settings)
        print((out / "report.md").read_text())
        print(f"eval-bag: {summary['predictions']} predictions; report in {out}")
        return 0
    except KeyboardInterrupt:
        return 130
    except errors as exc:
        print(f"dream-vla {args.command}: {exc}", file=sys.stderr)
        return 2


def _training_errors() -> tuple[type[BaseException], ...]:
    from dream_vla_ros.data.lerobot import DatasetError
    from dream_vla_ros.finetune.recipe import RecipeError
    from dream_vla_ros.finetune.trainer import TrainingError
    from dream_vla_ros.model.checkpoint import CheckpointError

    return (RecipeError, TrainingError, DatasetError, CheckpointError, OSError)


def _guarded(label: str, errors: tuple[type[BaseException], ...], body) -> int:
    """Run a command: its known errors become one line on stderr and exit status 2."""
    try:
        return body()
    except KeyboardInterrupt:
        return 130
    except errors as exc:
        print(f"dream-vla {label}: {exc}", file=sys.stderr)
        return 2


def _train_command(args: argparse.Namespace) -> int:
    from dream_vla_ros.finetune.export import merge_checkpoint
    from dream_vla_ros.finetune.recipe import load_recipe
    from dream_vla_ros.finetune.trainer import Trainer

    def body() -> int:
        if args.command == "merge":
            print(f"merge: {args.checkpoint} -> {merge_checkpoint(args.checkpoint, args.out_dir)}")
            return 0
        recipe = load_recipe(args.recipe, args.overrides)
        result = Trainer(recipe, resume=args.resume, progress=not args.no_progress).run()
        if args.merge:
            out = merge_checkpoint(result.final, result.output / "final-merged")
            print(f"merge: {result.final} -> {out}")
        return 0

    return _guarded(args.command, _training_errors(), body)


def _ground(args: argparse.Namespace) -> int:
    """Pretrain the tiny base on rendered scenes (dream_vla_ros/sim/grounding.py)."""
    from dream_vla_ros.sim.grounding import GroundingSettings, build_base

    settings = GroundingSettings(
        layouts=args.layouts,
        vision_steps=args.vision_steps,
        refer_steps=args.refer_steps,
        seed=args.seed,
    )
    if min(settings.layouts, settings.vision_steps, settings.refer_steps) < 1:
        print(
            "dream-vla sim ground: --layouts, --vision-steps and --refer-steps must be >= 1",
            file=sys.stderr,
        )
        return 2
    build_base(args.out, settings)
    return 0


def _sim_command(args: argparse.Namespace) -> int:
    from dream_vla_ros.ros.closed_loop import ClosedLoopError, collect, evaluate

    if args.action == "ground":
        return _ground(args)
    camera = (args.camera_width, args.camera_height)
    seeds = list(range(args.eval_seed0, args.eval_seed0 + args.seeds))

    def body() -> int:
        if args.action == "collect":
            summary = collect(
                args.out,
                args.episodes,
                args.seed0,
                camera,
                per_layout=args.per_layout,
                random_starts=args.random_starts,
            )
            print(f"collect: expert success {summary['expert_success_rate']:.0%} in {args.out}")
            return 0
        if args.action == "evaluate":
            summary = evaluate(args.checkpoint, args.out, seeds, args.timeout, camera)
            print(f"evaluate: success {summary['success_rate']:.0%} over {len(seeds)} seeds")
            return 0
        return _pipeline(args, camera, seeds)

    return _guarded(f"sim {args.action}", (ClosedLoopError, *_training_errors()), body)


def _pipeline(args: argparse.Namespace, camera: tuple[int, int], seeds: list[int]) -> int:
    """collect -> dataset build -> train -> evaluate, all under OUT."""
    from dream_vla_ros.data.build import BuildSettings, build_dataset
    from dream_vla_ros.finetune.recipe import load_recipe
    from dream_vla_ros.finetune.trainer import Trainer
    from dream_vla_ros.ros.closed_loop import collect, evaluate

    out = Path(args.out)
    start = time.monotonic()
    times: dict[str, float] = {}
    expert = collect(
        out / "episodes",
        args.episodes,
        args.seed0,
        camera,
        per_layout=args.per_layout,
        random_starts=args.random_starts,
    )
    times["collect_s"] = time.monotonic() - start
    t = time.monotonic()
    # 10 Hz cameras on a busy 2-core machine: the renderer stalls for up to ~0.7 s at
    # times; with 0.3 s / 0.2 s a pipeline run lost 10 of 36 episodes to such gaps
    settings = BuildSettings(fps=10, image_tolerance_s=0.6, state_tolerance_s=0.3)
    report = build_dataset(out / "episodes", out / "dataset", settings)
    print(report.summary())
    times["build_s"] = time.monotonic() - t
    t = time.monotonic()
    overrides = [f"data.dataset={out / 'dataset'}", f"output_dir={out / 'run'}", *args.overrides]
    result = Trainer(load_recipe(args.recipe, overrides), progress=not args.no_progress).run()
    times["train_s"] = time.monotonic() - t
    t = time.monotonic()
    summary = evaluate(result.final, out / "eval", seeds, args.timeout, camera)
    times["evaluate_s"] = time.monotonic() - t
    times["total_s"] = time.monotonic() - start
    final = {
        "expert_success_rate": expert["expert_success_rate"],
        "policy_success_rate": summary["success_rate"],
        "episodes": args.episodes,
        "per_layout": args.per_layout,
        "random_starts": args.random_starts,
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
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="dream-vla", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_demo = sub.add_parser("demo", help="the trained policy touching cubes in the MuJoCo world")
    p_demo.add_argument("--seeds", type=int, default=5, help="layouts to try")
    p_demo.add_argument("--out", default="demo_out", help="results, trajectories, GIF")
    p_demo.add_argument("--checkpoint", default="", help=f"default: models/{DEMO_CHECKPOINT}")
    p_demo.add_argument("--timeout", type=float, default=8.0, help="[s] per layout")
    p_launch = sub.add_parser("launch", help="run a node graph without ros2 launch")
    p_launch.add_argument("graph", nargs="?", help=f"one of {sorted(GRAPHS)}; none: list them")
    p_launch.add_argument(
        "args",
        nargs=argparse.REMAINDER,
        help="name:=value launch arguments; --print: show commands",
    )
    p_data = sub.add_parser("dataset", help="episodes -> LeRobot v3.0 dataset; crash recovery")
    data_sub = p_data.add_subparsers(dest="action", required=True)
    p_build = data_sub.add_parser("build", help="EPISODES_DIR OUT_DIR: build a training dataset")
    p_build.add_argument("episodes_dir")
    p_build.add_argument("out_dir")
    p_build.add_argument("--fps", type=int, default=10, help="action rate = dataset fps")
    p_build.add_argument("--all", action="store_true", help="also failed/unflagged episodes")
    p_build.add_argument("--state-topic", default="/joint_states")
    p_build.add_argument("--action-topic", default="/dream_vla/teleop/command")
    p_build.add_argument("--camera", action="append", default=[], metavar="ROLE=TOPIC")
    p_build.add_argument("--state-tolerance", type=float, default=0.05, help="[s]")
    p_build.add_argument("--image-tolerance", type=float, default=0.15, help="[s]")
    p_build.add_argument(
        "--codec",
        default="",
        choices=("", "libsvtav1", "libx264", "mpeg4"),
        help="video encoder (default: the first available of libsvtav1, libx264, mpeg4)",
    )
    p_build.add_argument("--joint-map", action="append", default=[], metavar="BAG_NAME=joint1")
    p_build.add_argument("--typestore", default="ros2_kilted")
    p_rec = data_sub.add_parser("recover", help="EPISODE_OR_DIR: make crashed episodes readable")
    p_rec.add_argument("path")
    p_play = sub.add_parser("play", help="publish a bag with its timing and /clock")
    p_play.add_argument("bag")
    p_play.add_argument("--rate", type=float, default=1.0)
    p_play.add_argument("--start-offset", type=float, default=0.0, help="[s] into the bag")
    p_play.add_argument("--loop", action="store_true")
    p_play.add_argument("--topics", nargs="*", default=[], help="only these topics")
    p_play.add_argument("--exclude", nargs="*", default=[], help="not these topics")
    p_play.add_argument("--wait-for-subscribers", type=float, default=0.0, help="[s]")
    p_play.add_argument("--typestore", default="ros2_kilted")
    p_eval = sub.add_parser("eval-bag", help="open-loop policy evaluation over a bag")
    p_eval.add_argument("bag")
    p_eval.add_argument("--checkpoint", required=True)
    p_eval.add_argument("--out", default="", help="report folder (default: BAG/eval)")
    p_eval.add_argument("--device", default="cpu")
    p_eval.add_argument("--dtype", default="fp32", choices=("fp32", "bf16", "fp16"))
    p_eval.add_argument("--instruction", default="")
    p_eval.add_argument("--camera", action="append", default=[], metavar="ROLE=TOPIC")
    p_eval.add_argument("--every", type=float, default=0.5, help="one prediction per [s]")
    p_eval.add_argument("--max-predictions", type=int, default=200)
    p_eval.add_argument("--typestore", default="ros2_kilted")
    p_train = sub.add_parser("train", help="finetune on a dataset with a recipe (config/finetune)")
    p_train.add_argument("recipe", help="recipe YAML, e.g. config/finetune/piper_sim_tiny.yaml")
    p_train.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. train.steps=50")
    p_train.add_argument("--resume", default="", help="continue from this checkpoint folder")
    p_train.add_argument("--merge", action="store_true", help="also export OUT/final-merged")
    p_train.add_argument("--no-progress", action="store_true", help="no progress bar")
    p_merge = sub.add_parser("merge", help="LoRA checkpoint -> one with merged weights")
    p_merge.add_argument("checkpoint")
    p_merge.add_argument("out_dir")
    p_sim = sub.add_parser("sim", help="touch-the-cube world: collect, evaluate, pipeline")
    sim_sub = p_sim.add_subparsers(dest="action", required=True)
    p_col = sim_sub.add_parser("collect", help="OUT: record expert episodes in the world")
    p_col.add_argument("out")
    p_ev = sim_sub.add_parser("evaluate", help="CHECKPOINT OUT: closed-loop success rate")
    p_ev.add_argument("checkpoint")
    p_ev.add_argument("out")
    p_ground = sim_sub.add_parser(
        "ground", help="OUT: pretrain the tiny base on rendered scenes (grounding)"
    )
    p_ground.add_argument("out")
    p_ground.add_argument("--layouts", type=int, default=600, help="rendered training scenes")
    p_ground.add_argument("--vision-steps", type=int, default=1600)
    p_ground.add_argument("--refer-steps", type=int, default=1200)
    p_ground.add_argument("--seed", type=int, default=0)
    p_pipe = sim_sub.add_parser("pipeline", help="OUT: collect -> build -> train -> evaluate")
    p_pipe.add_argument("out")
    p_pipe.add_argument("--recipe", default=str(config_path("finetune/touch_tiny_cpu.yaml")))
    p_pipe.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="recipe overrides")
    p_pipe.add_argument("--no-progress", action="store_true")
    for p in (p_col, p_ev, p_pipe):
        p.add_argument("--episodes", type=int, default=60, help="expert episodes to record")
        p.add_argument("--seed0", type=int, default=1000, help="first layout seed of collection")
        p.add_argument(
            "--per-layout",
            type=int,
            default=3,
            help="episodes per layout, each naming a different cube (1-3)",
        )
        p.add_argument(
            "--random-starts",
            type=int,
            default=0,
            help="more episodes per layout from random poses over the table (0-6)",
        )
        p.add_argument("--seeds", type=int, default=20, help="evaluation layouts")
        p.add_argument("--eval-seed0", type=int, default=5000, help="first evaluation seed")
        p.add_argument("--timeout", type=float, default=8.0, help="[s] per evaluation rollout")
        p.add_argument("--camera-width", type=int, default=320)
        p.add_argument("--camera-height", type=int, default=240)
    # KEY=VALUE overrides may also follow an option (`train RECIPE --no-progress a.b=1`),
    # which argparse alone leaves unrecognised
    args, extra = parser.parse_known_args(argv)
    if extra:
        if hasattr(args, "overrides") and all("=" in a and not a.startswith("-") for a in extra):
            args.overrides = [*args.overrides, *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "sim":
        sys.exit(_sim_command(args))
    if args.command in ("train", "merge"):
        sys.exit(_train_command(args))
    if args.command in ("dataset", "play", "eval-bag"):
        sys.exit(_data_command(args))
    try:
        if args.command == "demo":
            sys.exit(demo(args.seeds, args.out, args.checkpoint, args.timeout))
        if args.graph is None:
            _list_graphs()
            return
        g = graph(args.graph)
        show = "--print" in args.args
        values = parse_arguments(g, [a for a in args.args if a != "--print"])
        if show:
            for node in g.nodes:
                print(f"{node.name}: {shlex.join(node_command(node, values))}")
            return
        sys.exit(launch(g, values))
    except LaunchError as exc:
        print(f"dream-vla: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
