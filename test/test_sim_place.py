"""The physics world and the place task: layouts, success, the expert's grasp,
camera offsets (no ROS)."""

from __future__ import annotations

import numpy as np
import pytest

from dream_vla_ros.control import load_safety_config
from dream_vla_ros.evaluation.physics import GRIPPER_SPEED_M_S, reset, rollout
from dream_vla_ros.robot.piper_sim import SimGripper
from dream_vla_ros.sim.arm_replay import ArmReplay
from dream_vla_ros.sim.place import (
    BOWL_COLOURS,
    BOWL_SEPARATION_M,
    CUBE_BOWL_SEPARATION_M,
    CUBE_SEPARATION_M,
    MISS_HEIGHTS_M,
    OPEN_M,
    Miss,
    PlaceExpert,
    PlaceMonitor,
    Snapshot,
    expert_with_miss,
    naming_line,
    placed_by_naming,
    sample_place_layout,
)
from dream_vla_ros.sim.task import COLOURS, CUBE_SIZE
from dream_vla_ros.sim.world import CameraOffset, PiperWorld

W, H = 160, 120
CFG = load_safety_config()
LOWER, UPPER = np.array(CFG.position_lower), np.array(CFG.position_upper)


@pytest.fixture(scope="module")
def world():
    w = PiperWorld(width=W, height=H, bowls=BOWL_COLOURS)
    yield w
    w.close()


@pytest.fixture(scope="module")
def expert_run(world):
    """The expert on layout 7, with a front frame every 0.5 s."""
    layout = sample_place_layout(7)
    expert = PlaceExpert(layout, LOWER, UPPER)
    run = rollout(world, layout, expert, duration_s=12.0, frame_every_s=0.5)
    return layout, expert, run


def test_place_layouts_are_seeded_separated_and_named():
    a, b = sample_place_layout(5), sample_place_layout(5)
    assert a.instruction == b.instruction
    assert all(np.array_equal(a.cubes[c], b.cubes[c]) for c in COLOURS)
    named = set()
    for seed in range(60):
        lay = sample_place_layout(seed)
        named.add((lay.cube, lay.bowl))
        bowls, cubes = list(lay.bowls.values()), list(lay.cubes.values())
        assert np.linalg.norm(bowls[0][:2] - bowls[1][:2]) >= BOWL_SEPARATION_M
        for i, c in enumerate(cubes):
            assert c[2] == CUBE_SIZE / 2
            assert all(np.linalg.norm(c[:2] - b[:2]) >= CUBE_BOWL_SEPARATION_M for b in bowls)
            assert all(np.linalg.norm(c[:2] - o[:2]) >= CUBE_SEPARATION_M for o in cubes[:i])
    assert len(named) == 6  # every cube and bowl gets named
    chosen = sample_place_layout(5, cube="blue", bowl="purple")
    assert chosen.instruction == "put the blue cube in the purple bowl"
    with pytest.raises(ValueError, match="unknown bowl colour 'pink'; choose one of"):
        sample_place_layout(5, bowl="pink")


def _snap(layout, moves=None, fingers=None, speeds=None, t=1.0):
    cubes = {c: p.copy() for c, p in layout.cubes.items()}
    cubes.update(moves or {})
    return Snapshot(
        time_s=t,
        cubes=cubes,
        speeds={c: 0.0 for c in COLOURS} | (speeds or {}),
        fingers={c: 0 for c in COLOURS} | (fingers or {}),
        tip=np.array([0.3, 0.0, 0.2]),
    )


def test_success_needs_the_named_cube_resting_released_alone_in_the_named_bowl():
    lay = sample_place_layout(3, cube="red", bowl="yellow")
    inside = lay.bowls["yellow"] + np.array([0.01, -0.01, CUBE_SIZE / 2 + 0.004])
    other = lay.bowls["purple"] + np.array([0.0, 0.0, CUBE_SIZE / 2 + 0.004])
    cases = {
        "placed": ({"red": inside}, {}, {}, True, "rests in the yellow bowl"),
        "dropped": ({"red": np.array([0.3, 0.0, 0.02])}, {}, {}, False, "in no bowl"),
        "wrong bowl": ({"red": other}, {}, {}, False, "in the purple bowl, not the yellow"),
        "still held": ({"red": inside}, {"red": 2}, {}, False, "still in the fingers"),
        "still moving": ({"red": inside}, {}, {"red": 0.3}, False, "rests"),
        "another cube in it": (
            {"red": inside, "green": inside + [0.0, 0.03, 0.0]},
            {},
            {},
            False,
            "green cube is in the yellow bowl too",
        ),
        "above the rim": ({"red": inside + [0.0, 0.0, 0.05]}, {}, {}, False, ""),
    }
    for name, (moves, fingers, speeds, success, words) in cases.items():
        monitor = PlaceMonitor(lay)
        monitor.update(_snap(lay, moves, fingers, speeds))
        outcome = monitor.outcome
        assert outcome.success is success, name
        if not success and name == "still moving":
            continue  # a moving cube: not yet a success, whatever it says of the place
        assert words in outcome.detail, (name, outcome.detail)


def test_stages_say_where_an_episode_got_to():
    lay = sample_place_layout(3, cube="red", bowl="yellow")
    monitor = PlaceMonitor(lay)
    cube = lay.cubes["red"]
    near = _snap(lay, t=1.0)
    near = Snapshot(1.0, near.cubes, near.speeds, near.fingers, cube + [0, 0, 0.01])
    monitor.update(near)
    assert monitor.closest_m == pytest.approx(0.01)
    np.testing.assert_allclose(monitor.closest_offset_m, [0.0, 0.0, 0.01])
    monitor.update(_snap(lay, fingers={"red": 2}, t=2.0))
    assert monitor.outcome.stage == "grasped" and set(monitor.stages) == {"reached", "grasped"}
    monitor.update(_snap(lay, {"red": cube + [0, 0, 0.05]}, {"red": 2}, t=3.0))
    monitor.update(_snap(lay, {"red": np.array([0.25, 0.1, 0.02])}, t=4.0))  # dropped
    outcome = monitor.outcome
    assert outcome.stage == "lifted" and not outcome.success
    assert monitor.stages == {"reached": 1.0, "grasped": 2.0, "lifted": 3.0}


def test_placed_counts_by_the_named_cube_and_bowl():
    rollouts = [
        {"instruction": sample_place_layout(0, "red", "purple").instruction, "success": True},
        {"instruction": "put the red cube in the purple bowl", "success": False},
        {"instruction": "put the blue cube in the yellow bowl", "success": True},
        {"instruction": "touch the red cube", "success": True},  # not a place instruction
        {"instruction": "put the red cube into the purple bowl", "success": True},  # nor this
    ]
    counts = placed_by_naming(rollouts)
    assert counts["cube"] == {"red": [1, 2], "green": [0, 0], "blue": [1, 1]}
    assert counts["bowl"] == {"yellow": [1, 1], "purple": [1, 2]}
    assert naming_line(counts) == (
        "by named cube: red 1 / 2, blue 1 / 1; by named bowl: yellow 1 / 1, purple 1 / 2"
    )


def test_the_expert_lifts_the_cube_in_its_fingers_and_places_it(expert_run):
    layout, expert, run = expert_run
    outcome = run.monitor.outcome
    assert outcome.success, outcome
    assert list(run.monitor.stages) == ["reached", "grasped", "lifted", "placed"]
    times = np.array(run.times)
    lifting = [i for i, t in enumerate(times) if expert.phase(t) in ("lift", "carry")]
    assert lifting
    # the whole lift and carry: the cube is between both fingers, the gripper stalled
    # on it (3 cm: its 4 cm width less the closed fingers' 1 cm gap; the squeezing
    # fingers sink at most a few tenths of a millimetre into it) and squeezing
    assert all(run.held[i] == layout.cube for i in lifting)
    assert all(run.efforts[i] == pytest.approx(1.0) for i in lifting)
    assert all(-1e-3 < run.joints[i][6] - (CUBE_SIZE - 0.01) < 1e-3 for i in lifting)
    # ... and it moves with them: cube centre to fingertip stays constant
    from dream_vla_ros.control.kinematics import DHChain
    from dream_vla_ros.sim.task import fingertip

    chain = DHChain.load()
    offsets = np.array(
        [run.cubes[i][layout.cube] - fingertip(chain, run.joints[i])[0] for i in lifting]
    )
    path = [run.cubes[i][layout.cube] for i in lifting]
    travelled = np.linalg.norm(path[-1] - path[0])
    assert travelled > 0.1
    assert np.abs(offsets - offsets[0]).max() < 0.004
    # the other cubes never moved
    for colour in COLOURS:
        if colour != layout.cube:
            assert np.linalg.norm(run.cubes[-1][colour] - layout.cubes[colour]) < 1e-3
    # once released, nothing squeezes and the gripper is open again
    assert run.efforts[-1] == 0.0 and run.joints[-1][6] == pytest.approx(OPEN_M, abs=1e-3)


def test_an_expert_that_first_misses_goes_beside_the_cube_then_over_it_and_places(world):
    """A demonstration with a miss: the fingertip first stops beside the cube at the
    miss's height, then over the cube at that height, then the usual grasp."""
    from dream_vla_ros.control.kinematics import DHChain
    from dream_vla_ros.sim.task import fingertip

    chain = DHChain.load()
    layout = sample_place_layout(7)
    cube = layout.cubes[layout.cube]
    miss = Miss(0.03, -0.02, 0.08)
    expert = PlaceExpert(layout, LOWER, UPPER, chain=chain, miss=miss)
    expert.start(0.0, reset(world, layout))
    run = rollout(world, layout, expert, duration_s=expert.duration_s + 1.5)
    assert [p[0] for p in expert.poses[:3]] == ["approach", "correct", "descend"]
    assert run.monitor.outcome.success, run.monitor.outcome
    ends = {}
    for name, _, t1, _, _ in expert._segments[:2]:
        i = int(np.searchsorted(run.times, t1))
        ends[name] = fingertip(chain, run.joints[i])[0]
    assert ends["approach"] == pytest.approx([cube[0] + 0.03, cube[1] - 0.02, 0.08], abs=2e-3)
    assert ends["correct"] == pytest.approx([cube[0], cube[1], 0.08], abs=2e-3)
    # without a miss the same layout's plan goes straight above the cube
    assert [p[0] for p in PlaceExpert(layout, LOWER, UPPER).poses[:2]] == ["approach", "descend"]


def test_misses_are_seeded_bounded_and_refused_in_one_sentence():
    draws = [Miss.draw(seed, 0.04) for seed in range(200)]
    assert Miss.draw(5, 0.04) == draws[5]  # seeded
    radii = np.array([np.hypot(m.dx, m.dy) for m in draws])
    heights = np.array([m.z for m in draws])
    assert radii.min() >= 0.01 - 1e-4 and radii.max() <= 0.04 + 1e-4
    assert MISS_HEIGHTS_M[0] <= heights.min() and heights.max() <= MISS_HEIGHTS_M[1]
    assert Miss.parse(draws[3].text()) == draws[3] and Miss.parse("") is None
    for text, words in (
        ("0.1,0,0.08", "at most 0.06 m sideways"),
        ("0.01,0,0.03", "height must be"),
        ("0.01,0.08", "'DX,DY,Z'"),
        ("nan,0,0.08", "finite"),
    ):
        with pytest.raises(ValueError, match=words):
            Miss.parse(text)


def test_a_miss_out_of_reach_is_demonstrated_without_it():
    """Beside a far corner the point of a miss can be out of the arm's reach (layout
    1035, blue cube: 0.41 m out at -0.23 m): the expert then goes straight above
    the cube, and the caller learns that no miss is demonstrated (the collector
    logs it)."""
    layout = sample_place_layout(1035, "blue", "purple")
    far = Miss(0.0395, -0.031, 0.0879)
    with pytest.raises(RuntimeError, match="IK did not reach"):
        PlaceExpert(layout, LOWER, UPPER, miss=far)
    expert, used = expert_with_miss(layout, LOWER, UPPER, far)
    assert used is None and [p[0] for p in expert.poses[:2]] == ["approach", "descend"]
    near = Miss(0.01, 0.01, 0.08)
    expert, used = expert_with_miss(layout, LOWER, UPPER, near)
    assert used == near and expert.poses[1][0] == "correct"


def test_front_images_follow_the_cube_the_fingers_move(world, expert_run):
    """The frames of the rollout: where the cube was, the table shows; over the
    bowl, the cube does. A frozen image cannot pass."""
    layout, _, run = expert_run
    first, last = run.frames[0]["front"], run.frames[-1]["front"]
    assert np.abs(first.astype(int) - last).mean() > 0.5
    reset(world, layout)
    world.set_cubes({layout.cube: layout.bowls[layout.bowl] + [0, 0, CUBE_SIZE / 2 + 0.004]})
    world.set_joints(run.joints[-1])
    expected = world.render("front")
    # the final frame shows the cube in the bowl much as the moved scene does, not as
    # the first frame did
    assert np.abs(last.astype(int) - expected).mean() < np.abs(first.astype(int) - expected).mean()


def test_physics_is_deterministic(world):
    layout = sample_place_layout(9)
    runs = [
        rollout(world, layout, PlaceExpert(layout, LOWER, UPPER), duration_s=5.0) for _ in range(2)
    ]
    assert all(np.array_equal(a, b) for a, b in zip(runs[0].joints, runs[1].joints))
    assert all(
        np.array_equal(a[c], b[c]) for a, b in zip(runs[0].cubes, runs[1].cubes) for c in COLOURS
    )


def test_a_camera_offset_moves_the_front_view_and_back(world):
    layout = sample_place_layout(2)
    reset(world, layout)
    nominal = world.render("front")
    offset = CameraOffset.parse("0.03, -0.02, 0.01, 2, 4, -3")
    assert offset.as_list() == pytest.approx([0.03, -0.02, 0.01, 2.0, 4.0, -3.0])
    world.set_front_offset(offset)
    assert np.abs(world.render("front").astype(int) - nominal).mean() > 2.0
    world.set_front_offset(CameraOffset())
    assert np.array_equal(world.render("front"), nominal)
    with pytest.raises(ValueError, match="not six numbers; write dx,dy,dz,roll,pitch,yaw"):
        CameraOffset.parse("0.1,0.2")


def _expert_with_late_states(world, seed: int, replay: ArmReplay, burst_s: float) -> bool:
    """The expert on layout `seed` as the sim_world node sees it: 50 Hz joint states
    delivered in bursts `burst_s` apart, the arm replayed by `replay` every 10 ms.
    Whether the cube was placed."""
    layout = sample_place_layout(seed)
    expert = PlaceExpert(layout, LOWER, UPPER)
    q = reset(world, layout)
    grip = SimGripper(float(UPPER[6]), GRIPPER_SPEED_M_S, q[6], q[6], 1.0, enabled=True)
    vmax = np.asarray(CFG.max_velocity)[:6]
    expert.start(0.0, q)
    monitor, pending, dt = PlaceMonitor(layout), [], 0.01
    for k in range(1, 1300):
        t = k * dt
        target = expert.command(t)
        q[:6] += np.clip(target[:6] - q[:6], -vmax * dt, vmax * dt)
        grip.target = float(np.clip(target[6], 0.0, grip.max_m))
        grip.obstacle_m = world.gripper_obstacle()
        grip.step(dt)
        q[6] = grip.position
        if k % 2 == 0:
            pending.append((t, q.copy(), grip.effort_nm))
        if k % round(burst_s / dt) == 0:
            for state in pending:
                replay.add(*state)
            pending = []
        arm = replay.advance(t, dt)
        if arm is not None:
            world.step(arm[1], arm[2], dt)
            monitor.update(Snapshot.of(world))
    return monitor.outcome.success


def test_the_world_keeps_the_held_cube_when_joint_states_come_late_in_bursts(world):
    """sim/arm_replay.py: with the expert's joint states arriving in bursts 300 ms
    apart (a loaded host), the replayed arm waits and catches up and the cube is
    placed; an arm on the wall clock (now - lag, whatever has arrived) jumps with
    each burst and shakes it loose."""
    seeds = (0, 1)
    assert all(_expert_with_late_states(world, s, ArmReplay(0.05), 0.3) for s in seeds)
    wall_clock = [_expert_with_late_states(world, s, ArmReplay(0.05, None), 0.3) for s in seeds]
    assert not all(wall_clock)


def test_the_arm_replay_interpolates_waits_for_late_states_and_catches_up_bounded():
    replay = ArmReplay(lag_s=0.05)
    assert replay.advance(1.0, 0.01) is None  # nothing measured yet
    for k in range(11):  # 50 Hz states of a joint moving at 1 rad/s, up to t = 0.2
        replay.add(0.02 * k, np.full(7, 0.02 * k), 0.0)
    replay.add(0.1, np.zeros(7), 0.0)  # not newer than the newest: ignored
    t, q, _ = replay.advance(0.16, 0.01)
    assert t == pytest.approx(0.11) and q[0] == pytest.approx(0.11)  # between two states
    # the states stop coming: the arm waits at the newest one, never past it
    times = [replay.advance(0.16 + 0.01 * k, 0.01)[0] for k in range(1, 20)]
    assert max(times) == pytest.approx(0.2) and times == sorted(times)
    assert replay.late_ticks > 0
    # they come again: the arm catches up at most 1.5x as fast as the physics runs
    for k in range(11, 40):
        replay.add(0.02 * k, np.full(7, 0.02 * k), 0.0)
    before = replay.t
    t, _, _ = replay.advance(0.8, 0.01)
    assert t - before == pytest.approx(0.015)
    # the wall-clock arm goes straight to now - lag
    wall = ArmReplay(lag_s=0.05, catch_up=None)
    for k in range(40):
        wall.add(0.02 * k, np.full(7, 0.02 * k), 0.0)
    assert wall.advance(0.5, 0.01)[0] == pytest.approx(0.45)
    assert replay.to_newest()[0] == pytest.approx(0.78) and replay.t == pytest.approx(0.78)


def test_squeezing_fingers_report_where_they_stop_and_close_on_nothing(world, expert_run):
    """While the gripper squeezes, the blocking opening the world reports is the
    fingers' own, whether or not both touch a cube: closing on nothing it follows
    them down to ~0 (the gripper then reaches its target and stops squeezing); not
    squeezing and touching nothing, 0. (On a held cube: the lift test above.)"""
    layout, expert, run = expert_run
    carrying = [i for i, t in enumerate(run.times) if expert.phase(t) == "carry"]
    q = run.joints[carrying[len(carrying) // 2]]
    reset(world, layout, q)
    world.set_joints(np.r_[q[:6], 0.03])  # fingers open around nothing, mid-air
    assert world.held() == "" and world.gripper_obstacle() == 0.0
    world.step(np.r_[q[:6], 0.03], 1.0, 0.004)  # closing: the report follows them
    assert world.squeezing and world.gripper_obstacle() == world.opening() > 0.02
    world.step(np.r_[q[:6], 0.03], 1.0, 0.3)
    assert world.squeezing and world.gripper_obstacle() < 1e-3
    world.step(np.r_[q[:6], 0.0], 0.0, 0.02)
    assert not world.squeezing and world.gripper_obstacle() == 0.0
