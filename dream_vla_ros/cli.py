"""The `dream-vla` command.

dream-vla demo [--seconds S] [arg:=value ...]
    the simulated graph (arm simulator, cameras, policy, controller) for S seconds,
    with a live view and a summary of what the arm did
dream-vla launch GRAPH [arg:=value ...] [--print]
    run a node graph (sim | bringup) without ros2 launch; --print shows the commands
dream-vla launch
    list the graphs and their arguments
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import threading
import time
from pathlib import Path

import numpy as np

from dream_vla_ros.launch_graph import GRAPHS, LaunchError, graph, node_command, parse_arguments
from dream_vla_ros.launcher import Launcher, launch
from dream_vla_ros.paths import config_path


class _Monitor:
    """What the demo shows: arm state, commands, and both nodes' diagnostics."""

    def __init__(self, node) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from sensor_msgs.msg import JointState
        from trajectory_msgs.msg import JointTrajectory

        self.lock = threading.Lock()
        self.measured: list[np.ndarray] = []
        self.commands: list[tuple[float, np.ndarray, np.ndarray]] = []
        self.chunks = 0
        self.diag: dict[str, dict[str, str]] = {}
        self.messages: dict[str, str] = {}
        node.create_subscription(JointState, "/joint_states", self._on_state, 50)
        node.create_subscription(JointState, "/controller/command", self._on_command, 200)
        node.create_subscription(JointTrajectory, "/dream_vla/action_chunk", self._on_chunk, 10)
        node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 10)

    def _on_state(self, msg) -> None:
        with self.lock:
            self.measured.append(np.array(msg.position))

    def _on_command(self, msg) -> None:
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        with self.lock:
            self.commands.append((stamp, np.array(msg.position), np.array(msg.velocity)))

    def _on_chunk(self, _msg) -> None:
        with self.lock:
            self.chunks += 1

    def _on_diag(self, msg) -> None:
        with self.lock:
            for status in msg.status:
                self.diag[status.name] = {kv.key: kv.value for kv in status.values}
                self.messages[status.name] = status.message

    def get(self, name: str, key: str) -> str:
        with self.lock:
            return self.diag.get("dream_vla/" + name, {}).get(key, "?")


def demo(seconds: float, argv: list[str]) -> int:
    g = graph("sim")
    values = parse_arguments(g, argv)
    launcher = Launcher(g, values)
    os.environ.update(launcher.env)  # this process joins the graph's DDS domain
    import rclpy
    from rclpy.node import Node

    from dream_vla_ros.control import load_safety_config

    cfg = load_safety_config()
    print(f"dream-vla demo: graph 'sim' for {seconds:.0f} s: {launcher.describe()}")
    print(f"  instruction: '{values['instruction']}'")
    if not values["checkpoint"]:
        print(
            f"  model: RANDOM WEIGHTS ({values['preset']} preset, {values['head']} head): the "
            "arm moves inside a small box near home; a trained checkpoint lands with the sim world"
        )
    launcher.start()
    rclpy.init()
    node = Node("dream_vla_demo_monitor")
    mon = _Monitor(node)
    code = 0
    start = time.monotonic()
    end = start + seconds
    next_report = start + 3.0
    try:
        while time.monotonic() < end:
            rclpy.spin_once(node, timeout_sec=0.05)
            code = launcher.check()
            if code:
                break
            if time.monotonic() >= next_report:
                next_report += 3.0
                with mon.lock:
                    q = mon.measured[-1][:6] if mon.measured else None
                joints = (
                    np.array2string(q, precision=2, suppress_small=True) if q is not None else "-"
                )
                print(
                    f"  t={time.monotonic() - start:4.1f}s  "
                    f"policy: ready={mon.get('policy', 'ready')} "
                    f"chunks={mon.get('policy', 'chunks_published')} "
                    f"p50={mon.get('policy', 'inference_p50_ms')} ms  "
                    f"controller: {mon.get('controller', 'mode')} "
                    f"accepted={mon.get('controller', 'chunks_accepted')}  joints={joints}"
                )
    except KeyboardInterrupt:
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
        clean = launcher.shutdown()
    if not code and not clean:
        code = 1
    return _summary(mon, cfg) or code


def _summary(mon: _Monitor, cfg) -> int:
    with mon.lock:
        commands = list(mon.commands)
        measured = list(mon.measured)
    if len(commands) < 2 or not measured:
        print("no commands were executed", file=sys.stderr)
        return 1
    stamps = np.array([c[0] for c in commands])
    q = np.array([c[1] for c in commands])
    v = np.array([c[2] for c in commands])
    period = 1.0 / 200.0
    consecutive = np.abs(np.diff(stamps) - period) < 0.5 * period
    dv = np.abs(np.diff(v, axis=0))[consecutive]
    travel = float(np.ptp(np.array(measured)[:, :6], axis=0).max())
    p, c = "policy", "controller"
    rows = [
        ("camera frames used (front)", mon.get(p, "frames.front")),
        ("chunks published / received", f"{mon.get(p, 'chunks_published')} / {mon.chunks}"),
        (
            "inference p50 / p95 (ms)",
            f"{mon.get(p, 'inference_p50_ms')} / {mon.get(p, 'inference_p95_ms')}",
        ),
        ("chunk rate (Hz)", mon.get(p, "chunk_rate_hz")),
        ("refused observations", mon.get(p, "refused_observations")),
        (
            "chunks accepted / rejected",
            f"{mon.get(c, 'chunks_accepted')} / {mon.get(c, 'chunks_rejected')}",
        ),
        ("commands sent", f"{len(commands)}"),
        ("measured joint travel (max, rad)", f"{travel:.3f}"),
        ("peak |velocity| / limit", f"{np.max(np.abs(v) / cfg.vmax):.2f}"),
        ("peak |accel| / limit", f"{np.max(dv / (cfg.amax * period)) if len(dv) else 0:.2f}"),
        ("inside soft limits", str(bool(np.all((q >= cfg.soft_lower) & (q <= cfg.soft_upper))))),
        ("controller mode", mon.get(c, "mode")),
    ]
    width = max(len(r[0]) for r in rows)
    print("\n" + "\n".join(f"  {name:<{width}}  {value}" for name, value in rows))
    ok = mon.get(c, "mode") == "running" and mon.get(c, "chunks_accepted") not in ("?", "0")
    if not ok:
        print("the arm did not run on policy chunks; see the node output above", file=sys.stderr)
    return 0 if ok else 1


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


def _sim_command(args: argparse.Namespace) -> int:
    from dream_vla_ros.ros.closed_loop import ClosedLoopError, collect, evaluate

    camera = (args.camera_width, args.camera_height)
    seeds = list(range(args.eval_seed0, args.eval_seed0 + args.seeds))

    def body() -> int:
        if args.action == "collect":
            summary = collect(args.out, args.episodes, args.seed0, camera)
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
    expert = collect(out / "episodes", args.episodes, args.seed0, camera)
    times["collect_s"] = time.monotonic() - start
    t = time.monotonic()
    # 10 Hz cameras on a busy machine: a frame can be a period late, not more
    settings = BuildSettings(fps=10, image_tolerance_s=0.3, state_tolerance_s=0.2)
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
    p_demo = sub.add_parser("demo", help="run the simulated graph and summarise what the arm did")
    p_demo.add_argument("--seconds", type=float, default=30.0)
    p_demo.add_argument("args", nargs="*", help="launch arguments of the sim graph, name:=value")
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
    p_pipe = sim_sub.add_parser("pipeline", help="OUT: collect -> build -> train -> evaluate")
    p_pipe.add_argument("out")
    p_pipe.add_argument("--recipe", default=str(config_path("finetune/touch_tiny_cpu.yaml")))
    p_pipe.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="recipe overrides")
    p_pipe.add_argument("--no-progress", action="store_true")
    for p in (p_col, p_ev, p_pipe):
        p.add_argument("--episodes", type=int, default=60, help="expert episodes to record")
        p.add_argument("--seed0", type=int, default=1000, help="first layout seed of collection")
        p.add_argument("--seeds", type=int, default=20, help="evaluation layouts")
        p.add_argument("--eval-seed0", type=int, default=5000, help="first evaluation seed")
        p.add_argument("--timeout", type=float, default=8.0, help="[s] per evaluation rollout")
        p.add_argument("--camera-width", type=int, default=320)
        p.add_argument("--camera-height", type=int, default=240)
    args = parser.parse_args(argv)
    if args.command == "sim":
        sys.exit(_sim_command(args))
    if args.command in ("train", "merge"):
        sys.exit(_train_command(args))
    if args.command in ("dataset", "play", "eval-bag"):
        sys.exit(_data_command(args))
    try:
        if args.command == "demo":
            sys.exit(demo(args.seconds, args.args))
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
