"""The ROS-free parts of closed-loop evaluation: the homing path, the kinematic proxy
(`dream-vla sim proxy`) on the shipped checkpoint, and the trajectory plot."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dream_vla_ros.control import JOINT_NAMES
from dream_vla_ros.evaluation.homing import home_duration_s, home_path
from dream_vla_ros.evaluation.kinematic import ProxySettings, run_proxy
from dream_vla_ros.paths import model_path
from dream_vla_ros.sim.task import HOME


def test_the_homing_path_ends_home_within_the_speed_it_was_planned_for():
    start = HOME + np.r_[0.6, -0.3, 0.2, 0.0, 0.1, 0.0, 0.0]
    seconds = home_duration_s(start, peak_speed=0.8)
    assert seconds == pytest.approx(1.875 * 0.6 / 0.8)
    times, q = home_path(start, 0.0, seconds, 0.05)
    assert q.shape == (len(times), 7) and np.allclose(times, 0.05 * np.arange(1, len(times) + 1))
    assert np.allclose(q[-1], HOME)
    speed = np.abs(np.diff(np.vstack([start, q]), axis=0)).max(1) / 0.05
    assert speed.max() <= 0.8 * 1.01, speed.max()
    # seen late (past its end), it is still one point: home (never an empty chunk)
    times, q = home_path(start, seconds + 0.7, seconds, 0.05)
    assert len(times) == 1 and np.allclose(q[0], HOME) and times[0] == pytest.approx(0.05)
    # half-way, the rest of the same path
    _, whole = home_path(start, 0.0, seconds, 0.05)
    _, rest = home_path(start, 0.5, seconds, 0.05)
    assert np.allclose(rest[-1], HOME) and len(rest) == len(whole) - 10


def test_the_proxy_settings_refuse_bad_values():
    with pytest.raises(ValueError, match="execute must be >= 1"):
        ProxySettings(execute=0)
    with pytest.raises(ValueError, match=r"replan_s must be >= 0\.005"):
        ProxySettings(replan_s=0.001)


def test_the_kinematic_proxy_scores_the_shipped_checkpoint_and_a_random_one(tmp_path):
    from dream_vla_ros.policy import PolicySettings
    from dream_vla_ros.policy.random_checkpoint import write_random_checkpoint

    seeds = [5000, 5001, 5002]
    good = run_proxy(
        model_path("touch_tiny"),
        seeds,
        ProxySettings(timeout_s=6.0),
        PolicySettings(noise_scale=0.5),
        out=tmp_path / "good",
        log=lambda _: None,
    )
    assert good["successes"] >= 2, good["rollouts"]
    written = json.loads((tmp_path / "good" / "results.json").read_text())
    assert [r["seed"] for r in written["rollouts"]] == seeds
    # untrained weights whose actions stay within 5 cm-ish of home (>= 14 cm above
    # every cube top): the proxy must not call that a success
    ckpt = tmp_path / "random"
    write_random_checkpoint(ckpt, "tiny", action_box=(HOME, np.full(7, 0.02)), head="flow")
    bad = run_proxy(ckpt, seeds[:2], ProxySettings(timeout_s=2.0), log=lambda _: None)
    assert bad["successes"] == 0, bad["rollouts"]
    assert bad["none"] + bad["wrong_cube"] == 2


def test_the_servo_proxy_runs_through_the_limits_of_the_chunk_controller(tmp_path):
    settings = ProxySettings(timeout_s=6.0, servo=True, replan_s=0.2, latency_s=0.06)
    from dream_vla_ros.policy import PolicySettings

    summary = run_proxy(
        model_path("touch_tiny"), [5000, 5001], settings, PolicySettings(noise_scale=0.5)
    )
    assert summary["mode"] == "servo" and summary["successes"] >= 1, summary["rollouts"]
    # the controller's ticks, and why it limited them, are reported with the rollouts
    limits = summary["controller_limits"]
    assert limits["ticks"] > 200 and 0 <= limits["limited"] <= limits["ticks"]
    assert limits["limited"] <= limits["clamped"] + limits["slowed"]
    assert limits["limited_share"] == round(limits["limited"] / limits["ticks"], 3)
    assert set(limits["slowed_by_joint"]) <= {*JOINT_NAMES}


def test_the_place_proxy_runs_the_expert_through_the_controller_and_the_physics():
    """The place expert streamed as the teleop node streams it (10 points 20 ms apart,
    50 Hz) through the chunk controller, the SimGripper and the physics: it places the
    cube, and the controller follows its plans: the gripper's close onto its lower
    limit (0 m) is reached, not held short of it, so almost no tick is limited."""
    from dream_vla_ros.control import load_safety_config
    from dream_vla_ros.evaluation.kinematic import expert_planner
    from dream_vla_ros.evaluation.place_proxy import place_servo_rollout
    from dream_vla_ros.sim.place import BOWL_COLOURS, PlaceExpert, sample_place_layout
    from dream_vla_ros.sim.world import PiperWorld

    cfg = load_safety_config()
    world = PiperWorld(width=160, height=120, bowls=BOWL_COLOURS)
    # the teleop node's stream: a chunk every 20 ms, 5 ms late; the arm 20 ms behind
    timing = ProxySettings(timeout_s=14.0, servo=True, replan_s=0.02, latency_s=0.005, lag_s=0.02)
    limits: dict = {}
    try:
        for seed in (1000, 1001):
            layout = sample_place_layout(seed)
            source = PlaceExpert(layout, cfg.soft_lower, cfg.soft_upper)
            monitor, fault = place_servo_rollout(
                expert_planner(source), world, layout, timing, limits=limits
            )
            assert fault == "" and monitor.outcome.success, monitor.outcome
            assert list(monitor.stages) == ["reached", "grasped", "lifted", "placed"]
    finally:
        world.close()
    assert limits["ticks"] > 2000
    assert limits["limited"] / limits["ticks"] < 0.02, limits


def test_the_place_proxy_scores_a_checkpoint_with_stages_and_limited_ticks(tmp_path):
    from dream_vla_ros.evaluation.place_proxy import run_place_proxy
    from dream_vla_ros.policy import PolicySettings
    from dream_vla_ros.sim.place import sample_place_layout
    from dream_vla_ros.sim.world import SHIFTED_POSES, CameraOffset

    shifted = [CameraOffset.parse(p) for p in SHIFTED_POSES[:2]]
    summary = run_place_proxy(
        model_path("place_tiny"),
        [5000, 5001],
        ProxySettings(timeout_s=3.0, servo=True),
        PolicySettings(noise_scale=0.5, smooth_degree=4),
        out=tmp_path,
        camera_offsets=shifted,
        log=lambda _: None,
        cube="green",
        bowl="purple",
    )
    written = json.loads((tmp_path / "results.json").read_text())
    # the named cube and bowl forced on both layouts; the named cube where the layout has it
    instructions = {r["instruction"] for r in written["rollouts"]}
    assert instructions == {"put the green cube in the purple bowl"}
    cubes = [sample_place_layout(s).cubes["green"][:2] for s in (5000, 5001)]
    assert [r["cube_xy_m"] for r in written["rollouts"]] == [
        [round(float(v), 4) for v in xy] for xy in cubes
    ]
    assert summary["placed_by_naming"]["bowl"]["purple"][1] == 2
    assert summary["placed_by_naming"]["cube"]["green"][1] == 2
    assert [r["seed"] for r in written["rollouts"]] == [5000, 5001]
    assert [r["camera_offset"] for r in written["rollouts"]] == [o.as_list() for o in shifted]
    assert sum(summary["stages"].values()) == 2
    named = summary["placed_by_naming"]
    for kind in ("cube", "bowl"):
        assert sum(t for _, t in named[kind].values()) == 2, named
    limits = summary["controller_limits"]
    assert limits["ticks"] == 2 * 600  # 3 s at 200 Hz each, no fault
    assert limits["limited_share"] == round(limits["limited"] / limits["ticks"], 3)
