"""`dream-vla sim ground|collect|evaluate|pipeline|proxy`: the touch and place tasks
in the MuJoCo world (docs/sim.md)."""

from __future__ import annotations

import argparse

from dream_vla_ros.cli.common import command_group
from dream_vla_ros.finetune.entry import training_errors
from dream_vla_ros.guard import guarded
from dream_vla_ros.paths import config_path


def _collection_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--episodes", type=int, default=0, help="expert episodes to record; 0: touch 60, place 40"
    )
    p.add_argument("--seed0", type=int, default=1000, help="first layout seed of collection")
    p.add_argument(
        "--per-layout",
        type=int,
        default=0,
        help="episodes per layout, each naming a different cube (touch: 1-3) or cube and "
        "bowl (place: 1-6); 0: touch 3, place 2",
    )
    p.add_argument(
        "--random-starts",
        type=int,
        default=0,
        help="more episodes per layout from random poses over the table (0-6)",
    )
    p.add_argument(
        "--miss-radius",
        type=float,
        default=0.0,
        help="[m] place: each demonstration first approaches up to this far beside the "
        "cube, then moves over it (sim/place.py Miss; 0-0.06); 0: straight above it",
    )


def _evaluation_options(p: argparse.ArgumentParser, proxy: bool = False) -> None:
    p.add_argument("--seeds", type=int, default=20 if not proxy else 60, help="layouts")
    p.add_argument("--eval-seed0", type=int, default=5000, help="first evaluation seed")
    p.add_argument(
        "--timeout", type=float, default=0.0, help="[s] per rollout; 0: touch 8, place 20"
    )


TIMEOUTS_S = {"touch": 8.0, "place": 20.0}
EPISODES = {"touch": 60, "place": 40}
PER_LAYOUT = {"touch": 3, "place": 2}


def _world_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", choices=("touch", "place"), default="touch", help="the task")
    p.add_argument(
        "--camera-offset",
        default="",
        metavar="DX,DY,DZ,ROLL,PITCH,YAW",
        help="front camera offset from its nominal pose (m, deg); empty: nominal",
    )


def _camera_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--camera-width", type=int, default=320)
    p.add_argument("--camera-height", type=int, default=240)


def add_parsers(sub) -> None:
    sim_sub = command_group(
        sub,
        "sim",
        "the MuJoCo world (touch, place): ground, collect, evaluate, pipeline, proxy",
        run,
    )
    p_col = sim_sub.add_parser("collect", help="OUT: record expert episodes in the world")
    p_col.add_argument("out")
    _collection_options(p_col)
    _camera_options(p_col)
    _world_options(p_col)
    p_col.add_argument(
        "--camera-randomise",
        action="store_true",
        help="draw the front camera's pose for every episode (sim/world.py CAMERA_JITTER)",
    )
    p_ev = sim_sub.add_parser("evaluate", help="CHECKPOINT OUT: closed-loop success rate")
    p_ev.add_argument("checkpoint")
    p_ev.add_argument("out")
    _evaluation_options(p_ev)
    _camera_options(p_ev)
    _world_options(p_ev)
    p_ev.add_argument(
        "--camera-set",
        choices=("nominal", "shifted"),
        default="nominal",
        help="shifted: the held-out shifted front-camera poses in turn (sim/world.py "
        "SHIFTED_POSES); --camera-offset, when given, wins",
    )
    p_ground = sim_sub.add_parser(
        "ground", help="OUT: pretrain the tiny base on rendered scenes (grounding)"
    )
    p_ground.add_argument("out")
    p_ground.add_argument("--layouts", type=int, default=600, help="rendered training scenes")
    p_ground.add_argument("--vision-steps", type=int, default=1600)
    p_ground.add_argument("--refer-steps", type=int, default=1200)
    p_ground.add_argument("--seed", type=int, default=0)
    p_ground.add_argument(
        "--task", choices=("touch", "place"), default="touch", help="the world's task"
    )
    p_ground.add_argument(
        "--image-size",
        type=int,
        default=224,
        help="the model's input size in pixels, a multiple of 28 (224: 64 tokens an image)",
    )
    p_ground.add_argument(
        "--vision-depth", type=int, default=0, help="the vision tower's layers (0: 2)"
    )
    p_ground.add_argument(
        "--vision-width",
        type=int,
        default=0,
        help="the vision tower's width, a multiple of 16 (0: 32)",
    )
    p_pipe = sim_sub.add_parser("pipeline", help="OUT: collect -> build -> train -> evaluate")
    p_pipe.add_argument("out")
    p_pipe.add_argument(
        "--recipe", default="", help="empty: config/finetune/{touch,place}_tiny_cpu.yaml"
    )
    p_pipe.add_argument(
        "--task", choices=("touch", "place"), default="touch", help="the world's task"
    )
    p_pipe.add_argument(
        "--camera-randomise",
        action="store_true",
        help="draw the front camera's pose for every episode (sim/world.py CAMERA_JITTER)",
    )
    p_pipe.add_argument(
        "--shifted-eval",
        action="store_true",
        help="evaluate on the held-out shifted front-camera poses too",
    )
    p_pipe.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="recipe overrides")
    p_pipe.add_argument("--no-progress", action="store_true")
    p_pipe.add_argument(
        "--image-tolerance",
        type=float,
        default=0.6,
        help="[s] dataset build: largest gap between a frame and its camera image "
        "(the renderer on a busy 2-core host stalls for up to ~0.7 s)",
    )
    p_pipe.add_argument(
        "--state-tolerance", type=float, default=0.3, help="[s] dataset build: joint-state gap"
    )
    _collection_options(p_pipe)
    _evaluation_options(p_pipe)
    _camera_options(p_pipe)
    p_proxy = sim_sub.add_parser(
        "proxy", help="CHECKPOINT: kinematic closed-loop proxy without ROS (seconds, not minutes)"
    )
    p_proxy.add_argument("checkpoint")
    _evaluation_options(p_proxy, proxy=True)
    _world_options(p_proxy)
    p_proxy.add_argument(
        "--camera-set",
        choices=("nominal", "shifted"),
        default="nominal",
        help="place: the held-out shifted front-camera poses in turn; --camera-offset wins",
    )
    p_proxy.add_argument("--execute", type=int, default=5, help="actions applied per chunk")
    p_proxy.add_argument(
        "--servo",
        action="store_true",
        help="through the chunk controller on a virtual clock (re-plan, latency below); "
        "the place task always is, with physics",
    )
    p_proxy.add_argument("--replan-s", type=float, default=0.2, help="--servo: re-plan period")
    p_proxy.add_argument("--latency-s", type=float, default=0.06, help="--servo: stamp to chunk")
    p_proxy.add_argument("--lag-s", type=float, default=0.0, help="--servo: arm behind command")
    p_proxy.add_argument("--threads", type=int, default=1, help="torch threads")
    p_proxy.add_argument("--out", default="", help="write results.json here")
    policy = p_proxy.add_argument_group("policy settings (the policy node's parameters)")
    policy.add_argument("--flow-steps", type=int, default=0, help="0: the checkpoint's")
    policy.add_argument("--noise-seed", type=int, default=0, help="reset per layout")
    policy.add_argument("--noise-scale", type=float, default=1.0, help="flow_noise_scale")
    policy.add_argument("--noise-correlation", type=float, default=0.0)
    policy.add_argument("--prefix-actions", type=int, default=0)
    policy.add_argument("--prefix-min-weight", type=float, default=1.0)
    policy.add_argument("--guidance", type=float, default=1.0, help="flow_guidance_scale")
    policy.add_argument("--guidance-until", type=float, default=1.0)
    policy.add_argument("--smooth-degree", type=int, default=0, help="chunk_smooth_degree (0: off)")
    policy.add_argument("--ensemble", type=int, default=0, help="chunk_ensemble (0: off)")
    policy.add_argument("--decode-steps", type=int, default=1, help="discrete head")
    policy.add_argument("--decode-algorithm", default="maskgit_plus", help="discrete head")
    policy.add_argument("--decode-temperature", type=float, default=0.0, help="discrete head")


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


def _collect(args: argparse.Namespace) -> int:
    from dream_vla_ros.evaluation.closed_loop import collect
    from dream_vla_ros.ros.client import GraphClient

    summary = collect(
        GraphClient,
        args.out,
        args.episodes or EPISODES[args.task],
        args.seed0,
        (args.camera_width, args.camera_height),
        per_layout=args.per_layout or PER_LAYOUT[args.task],
        random_starts=args.random_starts,
        task=args.task,
        camera_offset=args.camera_offset,
        camera_randomise=args.camera_randomise,
        miss_radius=args.miss_radius,
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
    )
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
    )
    torch.set_num_threads(args.threads)
    if args.task == "place":
        return _place_proxy(args, settings, policy)
    if args.camera_offset or args.camera_set != "nominal":
        raise ValueError("--camera-offset and --camera-set are for --task place in the proxy")
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


def _place_proxy(args: argparse.Namespace, settings, policy) -> int:
    from dream_vla_ros.evaluation.place_proxy import run_place_proxy
    from dream_vla_ros.sim.world import SHIFTED_POSES, CameraOffset

    if args.camera_offset:
        offsets = [CameraOffset.parse(args.camera_offset)]
    else:
        shifted = args.camera_set == "shifted"
        offsets = [CameraOffset.parse(p) for p in SHIFTED_POSES] if shifted else [CameraOffset()]
    summary = run_place_proxy(
        args.checkpoint, _seeds(args), settings, policy, args.out or None, offsets
    )
    stages = ", ".join(f"{k} {v}" for k, v in summary["stages"].items())
    limits = summary["controller_limits"]
    print(
        f"proxy: placed {summary['successes']} / {len(summary['rollouts'])} "
        f"(furthest stage: {stages}; controller faults {summary['controller_faults']})"
    )
    print(
        f"proxy: the controller limited {limits.get('limited', 0)} of {limits.get('ticks', 0)} "
        f"ticks ({limits['limited_share']:.0%}): targets outside the soft range "
        f"{limits.get('clamped', 0)}, slowed by the motion bounds {limits.get('slowed', 0)}; "
        f"targets lifted onto the workspace floor {limits.get('floor_lifted_points', 0)}"
    )
    return 0
