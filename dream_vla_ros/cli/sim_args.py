"""The arguments of `dream-vla sim ground|collect|evaluate|pipeline|proxy` (the
handlers are in cli/sim.py)."""

from __future__ import annotations

import argparse

from dream_vla_ros.cli.common import command_group


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
    p.add_argument(
        "--offline",
        action="store_true",
        help="the expert without ROS, its episodes written straight into a LeRobot "
        "dataset (collect: OUT is the dataset; evaluation/offline_collect.py), about 8x "
        "faster than through the graph",
    )


def _evaluation_options(p: argparse.ArgumentParser, proxy: bool = False) -> None:
    p.add_argument("--seeds", type=int, default=20 if not proxy else 60, help="layouts")
    p.add_argument("--eval-seed0", type=int, default=5000, help="first evaluation seed")
    p.add_argument(
        "--timeout", type=float, default=0.0, help="[s] per rollout; 0: touch 8, place 20"
    )


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


def add_parsers(sub, run) -> None:
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
    p_col.add_argument(
        "--dagger",
        default="",
        metavar="CHECKPOINT",
        help="place: the policy of CHECKPOINT drives each layout (its own cube and bowl) "
        "until a handover time, then the expert takes over; its continuations are the "
        "dataset (evaluation/dagger.py; without ROS)",
    )
    p_col.add_argument(
        "--handover-s",
        default="0.5,5.0",
        metavar="FIRST,LAST",
        help="--dagger: the handover time is drawn uniformly from this span [s]",
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
    p_proxy.add_argument("--replan-s", type=float, default=0.1, help="--servo: re-plan period")
    p_proxy.add_argument("--latency-s", type=float, default=0.06, help="--servo: stamp to chunk")
    p_proxy.add_argument("--lag-s", type=float, default=0.0, help="--servo: arm behind command")
    p_proxy.add_argument("--threads", type=int, default=1, help="torch threads")
    p_proxy.add_argument("--out", default="", help="write results.json here")
    p_proxy.add_argument(
        "--grasp-error",
        action="store_true",
        help="place: instead of rollouts, query the policy on the expert's own states and "
        "report how far from the expert's grasp it would close (grasp_error.json)",
    )
    p_proxy.add_argument(
        "--cube",
        default="",
        help="place: name this cube (red, green, blue) on every layout; empty: the layout's own",
    )
    p_proxy.add_argument(
        "--bowl",
        default="",
        help="place: name this bowl (yellow, purple) on every layout; empty: the layout's own",
    )
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
    policy.add_argument("--views", type=int, default=1, help="chunk_views (1: off)")
    policy.add_argument("--decode-steps", type=int, default=1, help="discrete head")
    policy.add_argument("--decode-algorithm", default="maskgit_plus", help="discrete head")
    policy.add_argument("--decode-temperature", type=float, default=0.0, help="discrete head")
