"""`dream-vla sim ground|collect|evaluate|pipeline|proxy`: the touch and place tasks
in the MuJoCo world (docs/sim.md)."""

from __future__ import annotations

import argparse

from dream_vla_ros.cli import sim_args
from dream_vla_ros.finetune.entry import training_errors
from dream_vla_ros.guard import guarded
from dream_vla_ros.paths import config_path

TIMEOUTS_S = {"touch": 8.0, "place": 20.0}
EPISODES = {"touch": 60, "place": 40}
PER_LAYOUT = {"touch": 3, "place": 2}


def add_parsers(sub) -> None:
    sim_args.add_parsers(sub, run)


def run(args: argparse.Namespace) -> int:
    from dream_vla_ros.dds import DdsError
    from dream_vla_ros.evaluation.driver import GraphError

    if args.action == "ground":
        return _ground(args)
    handlers = {
        "collect": _collect,
        "evaluate": _evaluate,
        "pipeline": _pipeline,
        "proxy": _proxy,
    }
    errors = (GraphError, DdsError, ValueError, *training_errors())
    return guarded(f"sim {args.action}", errors, lambda: handlers[args.action](args))


def _ground(args: argparse.Namespace) -> int:
    """Pretrain the tiny base on rendered scenes (dream_vla_ros/finetune/grounding.py)."""
    import sys

    from dream_vla_ros.finetune.grounding import GroundingSettings, build_base

    settings = GroundingSettings(
        layouts=args.layouts,
        vision_steps=args.vision_steps,
        refer_steps=args.refer_steps,
        seed=args.seed,
        task=args.task,
        image_size=args.image_size,
        vision_depth=args.vision_depth,
        vision_width=args.vision_width,
    )
    problem = settings.problem()
    if problem:
        print(f"dream-vla sim ground: {problem}", file=sys.stderr)
        return 2
    build_base(args.out, settings)
    return 0


def _seeds(args: argparse.Namespace) -> list[int]:
    return list(range(args.eval_seed0, args.eval_seed0 + args.seeds))


def _collect_dagger(args: argparse.Namespace, episodes: int, camera: tuple[int, int]) -> int:
    import torch

    from dream_vla_ros.evaluation.dagger import collect_dagger

    if args.task != "place":
        raise ValueError("--dagger is for the place task: add --task place")
    others = {
        "--miss-radius": args.miss_radius > 0,
        "--random-starts": args.random_starts > 0,
        "--per-layout": args.per_layout > 1,
    }
    given = [name for name, on in others.items() if on]
    if given:
        raise ValueError(
            f"--dagger runs the place task on each layout's own cube and bowl; drop {given[0]}"
        )
    try:
        span = tuple(float(v) for v in args.handover_s.split(","))
    except ValueError:
        span = ()
    if len(span) != 2:
        raise ValueError(f"--handover-s must be FIRST,LAST in seconds, got {args.handover_s!r}")
    torch.set_num_threads(1)  # the proxy's: the renderer has the other core
    summary = collect_dagger(
        args.out,
        args.dagger,
        episodes,
        args.seed0,
        camera,
        (span[0], span[1]),
        args.camera_offset,
        args.camera_randomise,
    )
    print(
        f"collect: the expert placed {summary['written']} of {summary['episodes']} "
        f"continuations; dataset in {args.out} ({summary['seconds']:.0f} s)"
    )
    return 0


def _check_offline(args: argparse.Namespace) -> None:
    if args.offline and args.random_starts:
        raise ValueError("--offline starts every episode from home; drop --random-starts")


def _collect(args: argparse.Namespace) -> int:
    _check_offline(args)
    episodes = args.episodes or EPISODES[args.task]
    camera = (args.camera_width, args.camera_height)
    if args.dagger:
        return _collect_dagger(args, episodes, camera)
    common = {
        "per_layout": args.per_layout or PER_LAYOUT[args.task],
        "camera_offset": args.camera_offset,
        "camera_randomise": args.camera_randomise,
        "miss_radius": args.miss_radius,
    }
    if args.offline:
        from dream_vla_ros.evaluation.offline_collect import collect_offline

        summary = collect_offline(args.out, episodes, args.seed0, camera, task=args.task, **common)
        print(
            f"collect: expert success {summary['expert_success_rate']:.0%}; dataset of "
            f"{summary['written']} episodes in {args.out} ({summary['seconds']:.0f} s)"
            + (
                f"; interrupted after {summary['episodes']} of {episodes} episodes"
                if summary["interrupted"]
                else ""
            )
        )
        return 0
    from dream_vla_ros.evaluation.closed_loop import collect
    from dream_vla_ros.ros.client import GraphClient

    summary = collect(
        GraphClient,
        args.out,
        episodes,
        args.seed0,
        camera,
        random_starts=args.random_starts,
        task=args.task,
        **common,
    )
    print(f"collect: expert success {summary['expert_success_rate']:.0%} in {args.out}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from dream_vla_ros.evaluation.closed_loop import evaluate
    from dream_vla_ros.ros.client import GraphClient

    seeds = _seeds(args)
    camera = (args.camera_width, args.camera_height)
    from dream_vla_ros.sim.world import SHIFTED_POSES

    timeout = args.timeout or TIMEOUTS_S[args.task]
    offsets = args.camera_offset or (SHIFTED_POSES if args.camera_set == "shifted" else "")
    summary = evaluate(
        GraphClient,
        args.checkpoint,
        args.out,
        seeds,
        timeout,
        camera,
        task=args.task,
        camera_offset=offsets,
    )
    limited = summary["limited_ticks"]
    print(
        f"evaluate: success {summary['success_rate']:.0%} over {len(seeds)} seeds; the "
        f"controller limited {limited['share']:.0%} of its {limited['ticks']} ticks"
    )
    if args.task == "place":
        from dream_vla_ros.sim.place import naming_line

        stages = ", ".join(f"{k} {v}" for k, v in summary["stages"].items())
        print(f"evaluate: furthest stage: {stages}")
        print(f"evaluate: placed {naming_line(summary['placed_by_naming'])}")
    return 0


def _pipeline(args: argparse.Namespace) -> int:
    from dream_vla_ros.evaluation.pipeline import PipelineSettings, run_pipeline
    from dream_vla_ros.ros.client import GraphClient

    recipe = args.recipe or str(config_path(f"finetune/{args.task}_tiny_cpu.yaml"))
    settings = PipelineSettings(
        recipe=recipe,
        overrides=tuple(args.overrides),
        episodes=args.episodes or EPISODES[args.task],
        seed0=args.seed0,
        per_layout=args.per_layout or PER_LAYOUT[args.task],
        random_starts=args.random_starts,
        seeds=tuple(_seeds(args)),
        timeout_s=args.timeout or TIMEOUTS_S[args.task],
        camera=(args.camera_width, args.camera_height),
        image_tolerance_s=args.image_tolerance,
        state_tolerance_s=args.state_tolerance,
        progress=not args.no_progress,
        task=args.task,
        camera_randomise=args.camera_randomise,
        miss_radius=args.miss_radius,
        shifted_eval=args.shifted_eval,
        offline=args.offline,
    )
    _check_offline(args)
    run_pipeline(GraphClient, args.out, settings)
    return 0


def _proxy(args: argparse.Namespace) -> int:
    import torch

    from dream_vla_ros.evaluation.kinematic import ProxySettings, run_proxy
    from dream_vla_ros.model.actions import DecodeSettings
    from dream_vla_ros.policy import PolicySettings

    if args.seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
    same_names = ("execute", "servo", "replan_s", "latency_s", "lag_s")
    settings = ProxySettings(
        timeout_s=args.timeout or TIMEOUTS_S[args.task], **{k: getattr(args, k) for k in same_names}
    )
    policy = PolicySettings(
        decode=DecodeSettings(
            steps=args.decode_steps,
            algorithm=args.decode_algorithm,
            temperature=args.decode_temperature,
        ),
        flow_steps=args.flow_steps or None,
        seed=args.noise_seed,
        prefix_actions=args.prefix_actions,
        prefix_min_weight=args.prefix_min_weight,
        noise_correlation=args.noise_correlation,
        noise_scale=args.noise_scale,
        guidance_scale=args.guidance,
        guidance_until=args.guidance_until,
        smooth_degree=args.smooth_degree,
        ensemble_chunks=args.ensemble,
        views=args.views,
    )
    torch.set_num_threads(args.threads)
    if args.grasp_error:
        return _grasp_error(args, settings, policy)
    if args.task == "place":
        return _place_proxy(args, settings, policy)
    if args.camera_offset or args.camera_set != "nominal":
        raise ValueError("--camera-offset and --camera-set are for --task place in the proxy")
    if args.cube or args.bowl:
        raise ValueError("--cube and --bowl name the place task's objects: add --task place")
    summary = run_proxy(args.checkpoint, _seeds(args), settings, policy, out=args.out or None)
    print(
        f"proxy: success {summary['successes']} / {len(summary['rollouts'])} "
        f"(wrong cube {summary['wrong_cube']}, none {summary['none']})"
    )
    limits = summary.get("controller_limits")
    if limits:
        print(
            f"proxy: the controller limited {limits['limited']} of {limits['ticks']} ticks "
            f"({limits['limited_share']:.0%}): targets outside the soft range "
            f"{limits['clamped']}, slowed by the motion bounds {limits['slowed']}; "
            f"targets lifted onto the workspace floor {limits.get('floor_lifted_points', 0)}"
        )
    return 0


def _grasp_error(args: argparse.Namespace, settings, policy_settings) -> int:
    """The policy's open-loop grasp error on the expert's states
    (dream_vla_ros/evaluation/grasp_error.py)."""
    import json
    from pathlib import Path

    from dream_vla_ros.evaluation.grasp_error import grasp_errors, policy_predict
    from dream_vla_ros.policy import Policy
    from dream_vla_ros.sim.place import BOWL_COLOURS
    from dream_vla_ros.sim.world import CameraOffset, PiperWorld

    if args.task != "place":
        raise ValueError("--grasp-error is for the place task: add --task place")
    policy = Policy.from_checkpoint(args.checkpoint, settings=policy_settings)
    world = PiperWorld(width=settings.width, height=settings.height, bowls=BOWL_COLOURS)
    try:
        if args.camera_offset:
            world.set_front_offset(CameraOffset.parse(args.camera_offset))
        result = grasp_errors(
            policy_predict(policy), _seeds(args), world, cube=args.cube, bowl=args.bowl
        )
    finally:
        world.close()
    for lead, s in result["by_lead"].items():
        print(
            f"grasp error {lead} s before the expert's grasp: median {s['median_m'] * 100:.1f} "
            f"cm, within 2 cm {s['within_2cm']:.0%}; radial mean {s['radial_mean_m'] * 100:+.1f}"
            f" rms {s['radial_rms_m'] * 100:.1f} cm, tangential mean "
            f"{s['tangential_mean_m'] * 100:+.1f} rms {s['tangential_rms_m'] * 100:.1f} cm"
        )
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "grasp_error.json").write_text(json.dumps(result, indent=2))
    return 0


def _place_proxy(args: argparse.Namespace, settings, policy) -> int:
    from dream_vla_ros.evaluation.place_proxy import run_place_proxy
    from dream_vla_ros.sim.place import naming_line
    from dream_vla_ros.sim.world import SHIFTED_POSES, CameraOffset

    if args.camera_offset:
        offsets = [CameraOffset.parse(args.camera_offset)]
    else:
        shifted = args.camera_set == "shifted"
        offsets = [CameraOffset.parse(p) for p in SHIFTED_POSES] if shifted else [CameraOffset()]
    summary = run_place_proxy(
        args.checkpoint,
        _seeds(args),
        settings,
        policy,
        args.out or None,
        offsets,
        cube=args.cube,
        bowl=args.bowl,
    )
    stages = ", ".join(f"{k} {v}" for k, v in summary["stages"].items())
    limits = summary["controller_limits"]
    print(
        f"proxy: placed {summary['successes']} / {len(summary['rollouts'])} "
        f"(furthest stage: {stages}; controller faults {summary['controller_faults']})"
    )
    print(f"proxy: placed {naming_line(summary['placed_by_naming'])}")
    print(
        f"proxy: the controller limited {limits.get('limited', 0)} of {limits.get('ticks', 0)} "
        f"ticks ({limits['limited_share']:.0%}): targets outside the soft range "
        f"{limits.get('clamped', 0)}, slowed by the motion bounds {limits.get('slowed', 0)}; "
        f"targets lifted onto the workspace floor {limits.get('floor_lifted_points', 0)}"
    )
    return 0
