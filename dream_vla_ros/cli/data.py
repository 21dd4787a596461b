"""`dream-vla dataset build|merge|recover`, `dream-vla play`, `dream-vla eval-bag`: recorded
episodes and bags."""

from __future__ import annotations

import argparse
from pathlib import Path

from dream_vla_ros.cli.common import command_group, pairs
from dream_vla_ros.guard import guarded


def add_parsers(sub) -> None:
    data_sub = command_group(
        sub, "dataset", "episodes -> LeRobot v3.0 dataset; crash recovery", run
    )
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
    p_merge = data_sub.add_parser(
        "merge", help="SOURCE... OUT: datasets recorded alike into one, without re-encoding"
    )
    p_merge.add_argument("sources", nargs="+")
    p_merge.add_argument("out")
    p_rec = data_sub.add_parser("recover", help="EPISODE_OR_DIR: make crashed episodes readable")
    p_rec.add_argument("path")
    p_play = sub.add_parser("play", help="publish a bag with its timing and /clock")
    p_play.set_defaults(run=run)
    p_play.add_argument("bag")
    p_play.add_argument("--rate", type=float, default=1.0)
    p_play.add_argument("--start-offset", type=float, default=0.0, help="[s] into the bag")
    p_play.add_argument("--loop", action="store_true")
    p_play.add_argument("--topics", nargs="*", default=[], help="only these topics")
    p_play.add_argument("--exclude", nargs="*", default=[], help="not these topics")
    p_play.add_argument(
        "--wait-for-subscribers",
        type=float,
        default=5.0,
        help="[s] at most this long before the first message, for the subscribers that "
        "already exist to match (a message sent before that is lost)",
    )
    p_play.add_argument(
        "--no-wait",
        dest="wait_for_subscribers",
        action="store_const",
        const=0.0,
        help="start at once (late subscribers miss the first messages)",
    )
    p_play.add_argument("--typestore", default="ros2_kilted")
    p_eval = sub.add_parser("eval-bag", help="open-loop policy evaluation over a bag")
    p_eval.set_defaults(run=run)
    p_eval.add_argument("bag")
    p_eval.add_argument("--checkpoint", required=True)
    p_eval.add_argument(
        "--unnorm-key", default="", help="dataset statistics of an official checkpoint"
    )
    p_eval.add_argument("--out", default="", help="report folder (default: BAG/eval)")
    p_eval.add_argument("--device", default="cpu")
    p_eval.add_argument("--dtype", default="fp32", choices=("fp32", "bf16", "fp16"))
    p_eval.add_argument("--instruction", default="")
    p_eval.add_argument("--camera", action="append", default=[], metavar="ROLE=TOPIC")
    p_eval.add_argument("--every", type=float, default=0.5, help="one prediction per [s]")
    p_eval.add_argument("--max-predictions", type=int, default=200)
    p_eval.add_argument("--typestore", default="ros2_kilted")
    p_eval.add_argument(
        "--joint-map",
        action="append",
        default=[],
        metavar="BAG_NAME=joint1",
        help="the bag's joint names -> joint1..joint6, gripper",
    )


def _errors(command: str) -> tuple[type[BaseException], ...]:
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
    if command == "eval-bag":
        from dream_vla_ros.model.checkpoint import CheckpointError

        errors += (CheckpointError,)
    return errors


def run(args: argparse.Namespace) -> int:
    handlers = {"play": _play, "eval-bag": _eval_bag}
    if args.command == "dataset":
        handler = {"build": _build, "merge": _merge, "recover": _recover}[args.action]
    else:
        handler = handlers[args.command]
    return guarded(args.command, _errors(args.command), lambda: handler(args))


def _build(args: argparse.Namespace) -> int:
    from dream_vla_ros.data.build import BuildSettings, build_dataset

    settings = BuildSettings(
        fps=args.fps,
        state_topic=args.state_topic,
        action_topic=args.action_topic,
        cameras=pairs(args.camera, "--camera"),
        state_tolerance_s=args.state_tolerance,
        image_tolerance_s=args.image_tolerance,
        include="all" if args.all else "success",
        typestore=args.typestore,
        joint_map=pairs(args.joint_map, "--joint-map"),
        codec=args.codec,
    )
    print(build_dataset(args.episodes_dir, args.out_dir, settings).summary())
    return 0


def _merge(args: argparse.Namespace) -> int:
    from dream_vla_ros.data.merge import merge_datasets

    info = merge_datasets(args.sources, args.out)
    print(
        f"dataset {args.out}: {info['total_episodes']} episodes, {info['total_frames']} frames "
        f"from {len(args.sources)} datasets"
    )
    return 0


def _recover(args: argparse.Namespace) -> int:
    from dream_vla_ros.data.episode import list_episodes, needs_recovery, recover_episode

    path = Path(args.path)
    folders = [path] if (path / "episode.json").is_file() else list_episodes(path)
    todo = [f for f in folders if needs_recovery(f)]
    for folder in todo:
        print(f"{folder.name}: {recover_episode(folder).note}")
    print(f"{len(todo)} of {len(folders)} episodes needed recovery")
    return 0


def _play(args: argparse.Namespace) -> int:
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


def _eval_bag(args: argparse.Namespace) -> int:
    from dream_vla_ros.data.bags import BagError
    from dream_vla_ros.evaluation.offline import EvalSettings, evaluate_bag
    from dream_vla_ros.policy.policy import Policy

    settings = EvalSettings(
        instruction=args.instruction,
        cameras=pairs(args.camera, "--camera"),
        every_s=args.every,
        max_predictions=args.max_predictions,
        typestore=args.typestore,
        joint_map=pairs(args.joint_map, "--joint-map"),
    )
    if not Path(args.bag).exists():  # before the model loads
        raise BagError(f"{args.bag} does not exist: give an episode folder or a rosbag2 folder")
    policy = Policy.from_checkpoint(
        args.checkpoint, args.dtype, args.device, unnorm_key=args.unnorm_key
    )
    out = Path(args.out) if args.out else Path(args.bag) / "eval"
    summary = evaluate_bag(args.bag, policy, out, settings)
    print((out / "report.md").read_text())
    print(f"eval-bag: {summary['predictions']} predictions; report in {out}")
    return 0
