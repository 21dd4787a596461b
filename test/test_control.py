"""The ROS-free control core: validation, splicing, safety filter, watchdog, latches, config."""

from __future__ import annotations

import math
import threading
from dataclasses import replace

import numpy as np
import pytest

from dream_vla_ros.control import (
    JOINT_NAMES,
    ChunkController,
    ChunkRejected,
    ConfigError,
    Mode,
    SafetyFilter,
    TrackingFault,
    load_safety_config,
    validate_chunk,
)
from dream_vla_ros.control.interpolation import splice
from dream_vla_ros.paths import config_path

CFG = load_safety_config()
T = 0.005
Q0 = np.array([0.0, 0.6, -0.6, 0.0, 0.3, 0.0, 0.02])
NAMES = list(JOINT_NAMES)


def chunk(now=100.0, h=10, dt=0.05, step=0.01, names=NAMES, base=Q0):
    pts = [list(base + np.r_[[step * (k + 1)] * 6, 0.0]) for k in range(h)]
    return names, now, [dt * (k + 1) for k in range(h)], pts


def rejected(*args, reference=None):
    with pytest.raises(ChunkRejected) as info:
        validate_chunk(*args, CFG, reference=reference)
    return info.value.reason


def test_validation_accepts_and_reorders_jumbled_names():
    names, stamp, tfs, pts = chunk()
    order = [6, 2, 0, 1, 5, 4, 3]
    c = validate_chunk(
        [names[i] for i in order], stamp, tfs, [[p[i] for i in order] for p in pts], 100.0, CFG
    )
    assert np.allclose(c.positions, np.array(pts))
    assert np.allclose(c.times_s, 100.0 + np.array(tfs))


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda n, s, t, p: (n, s, t, []), "empty"),
        (lambda n, s, t, p: (n, s, [0.0] * 300, [p[0]] * 300), "too_long"),
        (lambda n, s, t, p: ([*n[:-1], "joint1"], s, t, p), "duplicate_joint"),
        (lambda n, s, t, p: ([*n[:-1], "claw"], s, t, p), "unknown_joint"),
        (lambda n, s, t, p: (n[:-1], s, t, [q[:-1] for q in p]), "missing_joint"),
        (lambda n, s, t, p: (n, s, t[:-1], p), "size_mismatch"),
        (lambda n, s, t, p: (n, s, t, [p[0][:3], *p[1:]]), "size_mismatch"),
        (lambda n, s, t, p: (n, 0.0, t, p), "bad_stamp"),
        (lambda n, s, t, p: (n, math.nan, t, p), "bad_stamp"),
        (lambda n, s, t, p: (n, s - 1.5, t, p), "stale"),
        (lambda n, s, t, p: (n, s + 0.2, t, p), "future"),
        (lambda n, s, t, p: (n, s, t, [[math.nan] * 7, *p[1:]]), "non_finite"),
        (lambda n, s, t, p: (n, s, t, [[math.inf] + p[0][1:], *p[1:]]), "non_finite"),
        (lambda n, s, t, p: (n, s, [math.nan, *t[1:]], p), "non_finite"),
        (lambda n, s, t, p: (n, s, [t[1], t[0], *t[2:]], p), "bad_timing"),
        (lambda n, s, t, p: (n, s, [0.0, *t[1:]], p), "bad_timing"),
        (lambda n, s, t, p: (n, s, [x * 100 for x in t], p), "bad_timing"),
        (lambda n, s, t, p: (n, s, t, [[3.0] + q[1:] for q in p]), "out_of_range"),
        (lambda n, s, t, p: (n, s, t, [q[:6] + [0.2] for q in p]), "out_of_range"),
        (lambda n, s, t, p: (n, s - 0.9, t, p), "expired"),
    ],
)
def test_validation_rejects_with_reason(mutate, reason):
    assert rejected(*mutate(*chunk()), 100.0) == reason


def test_validation_rejects_large_start_jump_but_not_small_one():
    names, stamp, tfs, pts = chunk()
    far = Q0 + np.r_[0.0, 0.0, 0.0, 0.7, 0.0, 0.0, 0.0]
    assert rejected(names, stamp, tfs, pts, 100.0, reference=far) == "jump"
    validate_chunk(names, stamp, tfs, pts, 100.0, CFG, reference=Q0)


def test_small_excursions_beyond_limits_are_clamped_not_rejected():
    names, stamp, tfs, _ = chunk()
    pts = [list(Q0 + np.r_[0, 0, 0.6 - 0.01, 0, 0, 0, 0])] * len(tfs)  # joint3 at +0.01 > 0
    c = validate_chunk(names, stamp, tfs, pts, 100.0, CFG)
    f = SafetyFilter(CFG, T)
    f.reset(Q0)
    for _ in range(2000):
        cmd = f.step(c.positions[0])
    # it brakes onto the soft limit and stops within a*T^2 of it, never beyond
    assert CFG.soft_upper[2] - CFG.amax[2] * T**2 <= cmd.position[2] <= CFG.soft_upper[2]


def test_splice_is_continuous_in_position_and_velocity():
    c = validate_chunk(*chunk(), 100.0, CFG)
    q, v = Q0 + 0.003, np.r_[[0.4] * 6, 0.0]
    traj = splice(c, 100.012, q, v, CFG.amax, CFG.soft_lower, CFG.soft_upper)
    q_at, v_at = traj.sample(100.012)
    assert np.allclose(q_at, q) and np.allclose(v_at, v)
    q_eps, _ = traj.sample(100.012 + 1e-6)
    assert np.abs(q_eps - q).max() < 1e-5  # no jump just after the splice


def _accelerations(traj, t0: float, t1: float, dt: float = 1e-3) -> np.ndarray:
    times = np.arange(t0, t1, dt)
    velocities = np.array([traj.sample(float(t))[1] for t in times])
    return np.abs(np.diff(velocities, axis=0)) / dt  # (N-1, J)


def test_splice_fades_a_replan_offset_within_half_the_acceleration_limit():
    """A re-plan that lands 0.1 rad from the command (and moving the other way) is
    joined by a fade that needs at most half of each joint's acceleration limit; once
    the fade is over the trajectory is the chunk's plan, point for point."""
    c = validate_chunk(*chunk(h=30), 100.0, CFG)  # a line: the plan does not accelerate
    q = c.positions[0] + np.r_[0.1, -0.1, 0.0, 0.05, 0.0, 0.0, 0.0]
    v = np.r_[0.1, 0.3, 0.2, 0.2, 0.2, 0.2, 0.0]  # the plan moves at 0.2 rad/s
    traj = splice(c, 100.0, q, v, CFG.amax, CFG.soft_lower, CFG.soft_upper)
    assert 0.1 < traj.blend_s < 1.0
    acc = _accelerations(traj, 100.0, 100.0 + traj.blend_s)
    assert np.all(acc <= 0.5 * CFG.amax + 1e-3), acc.max(axis=0)
    for k in range(len(c.times_s)):
        if c.times_s[k] >= 100.0 + traj.blend_s:
            assert np.allclose(traj.sample(float(c.times_s[k]))[0], c.positions[k])


def test_the_fade_stays_inside_the_soft_range():
    """The gripper closing at 0.05 m/s, 2 mm above 0 m, gets a plan that rests at 0 m
    (its lower limit): turning the command round must not swing it below 0."""
    names, stamp, tfs, _ = chunk(h=20)
    points = [list(np.r_[Q0[:6], 0.0])] * len(tfs)
    c = validate_chunk(names, stamp, tfs, points, 100.0, CFG)
    q, v = np.r_[Q0[:6], 0.002], np.r_[np.zeros(6), -0.05]
    traj = splice(c, 100.0, q, v, CFG.amax, CFG.soft_lower, CFG.soft_upper)
    samples = [traj.sample(100.0 + k * 1e-3) for k in range(int(traj.blend_s * 1e3) + 10)]
    grip = np.array([p[6] for p, _ in samples])
    assert grip.min() == 0.0 and np.all(grip >= 0.0)
    assert all(v[6] == 0.0 for p, v in samples if p[6] == 0.0)  # resting on the limit


def test_a_plan_that_starts_too_fast_does_not_swing_the_fade_off():
    """Jumpy points (a random policy: 0.19 rad between the first two actions 50 ms
    apart, 3.8 rad/s) ask for a velocity the fade cannot match within its budget; it
    matches what it can and stays near the plan, and the filter limits the rest. A
    fade that matched it all swung the command 0.5 rad off, so far that the next
    chunks were refused as jumps."""
    names, stamp, tfs, _ = chunk(h=8)
    points = [list(Q0 + np.r_[0.0 if k == 0 else 0.19, np.zeros(6)]) for k in range(8)]
    c = validate_chunk(names, stamp, tfs, points, 100.02, CFG)
    traj = splice(c, 100.02, Q0, np.zeros(7), CFG.amax, CFG.soft_lower, CFG.soft_upper)
    times = np.arange(100.02, 100.02 + traj.blend_s, 1e-3)
    off = max(abs(traj.sample(float(t))[0][0] - traj.plan.sample(float(t))[0][0]) for t in times)
    e0 = abs(traj.offset[0])
    assert off <= e0 + 4 / 27 * traj.blend_s * 0.5 + 1e-9, (off, e0)


def test_late_chunk_is_followed_at_its_instants_latency_compensation():
    # observation at t=100.0, chunk arrives 0.12 s later: its points stay meant for
    # their instants (100.05 and 100.10 already passed); the arm is where the chunk
    # says it should be at each instant once the fade from the command is over
    c = validate_chunk(*chunk(h=30), 100.12, CFG)
    traj = splice(c, 100.12, Q0, np.zeros(7), CFG.amax, CFG.soft_lower, CFG.soft_upper)
    end = 100.12 + traj.blend_s
    later = [k for k in range(len(c.times_s)) if c.times_s[k] >= end]
    assert later, "the fade outlasts the chunk"
    for k in later:
        assert np.allclose(traj.sample(float(c.times_s[k]))[0], c.positions[k])


def test_replans_that_disagree_are_followed_without_the_limits():
    """A chunk every 0.2 s, 60 ms late, from a slow sinusoid; each re-plan is shifted
    by up to 0.05 rad (a policy's plans disagree by that much). The fades keep the
    spliced motion inside the limits: the filter changes under 2 % of ticks."""
    assert _limited_share(0.0, replan_offset_rad=0.05) < 0.02


def test_a_target_at_the_lower_limit_is_reached_exactly():
    """The closed gripper's target is 0 m, its lower limit: a smooth close ends there,
    not a*T^2/2 short of it, and the ticks after it are not limited."""
    c = ChunkController(CFG, T)
    start = Q0.copy()
    start[6] = 0.06
    c.activate(start, 100.0)

    def gripper(t: np.ndarray) -> np.ndarray:  # a 1.8 s minimum-jerk close from 100.0
        s = np.clip((t - 100.0) / 1.8, 0.0, 1.0)
        return 0.06 * (1.0 - s**3 * (10 - 15 * s + 6 * s * s))

    limited = []
    for k in range(600):
        now = 100.0 + k * T
        if k % 20 == 0:  # a chunk every 0.1 s, as a teleop stream
            times = np.arange(1, 11) * 0.05
            points = np.repeat(start[None], len(times), axis=0)
            points[:, 6] = gripper(now + times)
            c.submit(NAMES, now, times.tolist(), points.tolist(), now)
        cmd = c.tick(now + T, None)
        limited.append(cmd.limited)
    assert 0.0 <= cmd.position[6] <= 1e-12
    assert not any(limited[-100:])


def random_targets(rng, n, filt):
    for k in range(n):
        if k % 15 == 0:
            target = np.clip(
                filt.position + rng.normal(0, 0.4, 7) * np.r_[np.ones(6), 0.05],
                CFG.lower - 0.1,
                CFG.upper + 0.1,
            )
            velocity = rng.normal(0, 2, 7) if rng.random() < 0.5 else None
        yield target, velocity


@pytest.mark.parametrize("seed", range(4))
def test_filter_never_violates_limits(seed):
    rng = np.random.default_rng(seed)
    f = SafetyFilter(CFG, T)
    f.reset(Q0)
    prev_q, prev_v = f.position.copy(), f.velocity.copy()
    for target, velocity in random_targets(rng, 20000, f):
        cmd = f.step(target, velocity)
        assert np.all(cmd.position >= CFG.soft_lower - 1e-12)
        assert np.all(cmd.position <= CFG.soft_upper + 1e-12)
        assert np.all(np.abs(cmd.velocity) <= CFG.vmax + 1e-9)
        assert np.all(np.abs(cmd.velocity - prev_v) <= CFG.amax * T + 1e-9)
        assert np.allclose((cmd.position - prev_q) / T, cmd.velocity)
        prev_q, prev_v = cmd.position.copy(), cmd.velocity.copy()


def test_start_outside_soft_range_enters_it_within_limits():
    home = np.array(
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    )  # PiPER home: joint2/joint3 on the hard limits
    f = SafetyFilter(CFG, T)
    f.reset(home)
    prev_q, prev_v = home.copy(), np.zeros(7)
    for _ in range(400):
        cmd = f.step(home)
        assert np.all(np.abs(cmd.velocity) <= CFG.vmax + 1e-9)
        assert np.all(np.abs(cmd.velocity - prev_v) <= CFG.amax * T + 1e-9)
        assert np.all(np.abs(cmd.position - prev_q) <= CFG.vmax * T + 1e-9)
        prev_q, prev_v = cmd.position.copy(), cmd.velocity.copy()
    assert np.all(cmd.position >= CFG.soft_lower - 1e-12)
    assert np.all(cmd.position <= CFG.soft_upper + 1e-12)
    assert cmd.position[1] > home[1] and cmd.position[2] < home[2]


def test_filter_reaches_a_far_target_without_overshoot():
    f = SafetyFilter(CFG, T)
    f.reset(Q0)
    goal = Q0 + np.r_[1.0, 0.5, -0.5, 0.8, 0.6, -1.0, 0.03]
    trace = np.array([f.step(goal).position for _ in range(1500)])
    assert np.allclose(trace[-1], goal, atol=1e-9)
    direction = np.sign(goal - Q0)
    assert np.all((trace - goal) * direction <= 1e-12), "overshoot"


def test_filter_follows_a_feasible_moving_target_exactly():
    f = SafetyFilter(CFG, T)
    f.reset(Q0)
    speed = np.r_[0.3, 0.3, -0.3, 0.3, 0.3, 0.3, 0.01]
    # accelerate first, then the command must equal the target every tick
    for k in range(1, 300):
        cmd = f.step(Q0 + speed * k * T, speed)
    assert np.allclose(cmd.position, Q0 + speed * 299 * T, atol=1e-9)
    assert not cmd.limited


def test_late_ticks_cover_the_elapsed_time_within_the_limits():
    """A loaded host ticks irregularly: the command still follows a moving chunk in
    time, every step respects vmax and amax over its real length, and a stall moves
    no further than the cap (10 periods) allows."""
    rng = np.random.default_rng(3)
    c = ChunkController(CFG, T)
    c.activate(Q0, 100.0)
    speed = np.r_[0.6, 0.6, -0.6, 0.6, 0.3, 0.6, 0.0]  # rad/s, under half of vmax
    t = 100.0
    last_q, last_v, errors = Q0.copy(), np.zeros(7), []
    while t < 101.5:
        if t >= 100.0 and (not errors or len(errors) % 5 == 0):
            times = [0.05 * (i + 1) for i in range(20)]
            pts = [list(Q0 + speed * (t + dt - 100.0)) for dt in times]
            c.submit(NAMES, t, times, pts, t)
        # 0.1 s: a stall
        step = float(rng.choice([T, 2 * T, 3 * T, 4 * T, 0.1], p=[0.3, 0.3, 0.2, 0.17, 0.03]))
        t += step
        cmd = c.tick(t, None)
        used = min(step, 10 * T) if errors else T  # the first tick after activation: one period
        assert np.all(np.abs(cmd.position - last_q) <= CFG.vmax * used + 1e-9)
        assert np.all(np.abs(cmd.velocity - last_v) <= CFG.amax * used + 1e-9)
        assert np.allclose((cmd.position - last_q) / used, cmd.velocity)
        last_q, last_v = cmd.position, cmd.velocity
        errors.append(np.abs(cmd.position - (Q0 + speed * (t - 100.0)))[:6].max())
    # a fixed 5 ms step per tick would trail by ~0.5 rad after 1.5 s at this tick rate
    assert max(errors[-50:]) < 0.1, f"the command fell behind: {max(errors[-50:]):.3f} rad"
    assert c.mode is Mode.RUNNING


def test_irregular_ticks_never_cross_a_soft_limit():
    rng = np.random.default_rng(4)
    f = SafetyFilter(CFG, T, max_dt_s=4 * T)
    f.reset(Q0)
    goal = CFG.upper + 0.5  # beyond every soft limit: the filter must brake in time
    prev_v = np.zeros(7)
    for _ in range(2000):
        dt = float(rng.uniform(0.2 * T, 6 * T))
        cmd = f.step(goal, None, None, dt)
        used = min(max(dt, 1e-4), 4 * T)
        assert np.all(cmd.position <= CFG.soft_upper + 1e-12)
        assert np.all(np.abs(cmd.velocity - prev_v) <= CFG.amax * used + 1e-9)
        prev_v = cmd.velocity
    # and it gets there: a target at or beyond a limit is reached, not a*T^2/2 short
    # of it (the closed gripper sits on its lower limit)
    gap = CFG.soft_upper - cmd.position
    assert np.all(gap >= 0) and np.all(gap <= 1e-9), gap


def test_tracking_error_is_a_fault_not_a_clamp():
    f = SafetyFilter(CFG, T)
    f.reset(Q0)
    measured = Q0.copy()
    measured[1] += CFG.max_tracking_error_rad + 0.01
    with pytest.raises(TrackingFault, match="joint2"):
        f.step(Q0, None, measured)
    gripper_stalled = Q0.copy()
    gripper_stalled[6] += 0.05  # the gripper is exempt
    f.step(Q0, None, gripper_stalled)


def test_controller_watchdog_decelerates_and_holds():
    c = ChunkController(CFG, T)
    c.activate(Q0, 100.0)
    speed = np.r_[0.5, 0.3, -0.5, 0.5, 0.3, 0.5, 0.0]
    t = 100.0
    # 1.5 s of chunks, resent every 0.05 s: the splice fades the command from rest
    # onto the moving plan within half the acceleration limit (about 1.2 s)
    for k in range(300):
        if k % 10 == 0:
            pts = [list(Q0 + speed * (t + 0.05 * (i + 1) - 100.0)) for i in range(20)]
            c.submit(NAMES, t, [0.05 * (i + 1) for i in range(20)], pts, t)
            last_submit = t
        t += T
        c.tick(t, None)
    assert np.abs(c.last_command[1][:6]).max() == pytest.approx(0.5, abs=1e-3)
    t_loop_end = t
    speeds = []
    for _ in range(400):  # 2 s without chunks
        t += T
        cmd = c.tick(t, None)
        speeds.append(np.abs(cmd.velocity).max())
    assert c.holding and c.stats.watchdog_holds == 1
    # holding decelerates at the limit: 0.02 rad/s less each 5 ms tick
    first_hold = int(np.argmax(np.array(speeds) < 0.5 - 1e-2))
    expected = last_submit + CFG.chunk_timeout_s - t_loop_end
    assert first_hold * T == pytest.approx(expected, abs=2 * T)
    assert np.all(np.diff(speeds[first_hold - 1 :]) <= 1e-12)
    assert speeds[-1] == 0.0


def test_controller_estop_latches_and_rejects_chunks():
    c = ChunkController(CFG, T)
    c.activate(Q0, 100.0)
    c.estop()
    assert c.tick(100.01, Q0) is None
    with pytest.raises(ChunkRejected, match="not_running"):
        c.submit(*chunk(now=100.0), 100.0)
    c.fault("later fault")  # does not replace the e-stop
    assert c.mode is Mode.ESTOP
    with pytest.raises(RuntimeError):
        c.activate(Q0, 100.0)
    assert c.reset_fault() and c.mode is Mode.DISABLED
    c.activate(Q0, 100.1)
    assert c.tick(100.105, Q0) is not None


def test_controller_refuses_to_activate_outside_the_hard_limits():
    """The first command holds the measured pose; beyond the hard limits (by more than
    the chunk tolerance) the firmware would refuse it on every enable."""
    c = ChunkController(CFG, T)
    beyond = Q0.copy()
    beyond[4] = CFG.position_upper[4] + 0.2
    with pytest.raises(RuntimeError, match=r"joint5 is at 1\.420, outside its limits"):
        c.activate(beyond, 100.0)
    assert c.mode is Mode.DISABLED and c.tick(100.005, beyond) is None
    with pytest.raises(RuntimeError, match="measured pose"):
        c.activate(np.full(7, np.nan), 100.0)
    # on the limit or within the tolerance it starts and brings the joint inside
    edge = Q0.copy()
    edge[4] = CFG.position_upper[4] + 0.5 * CFG.out_of_range_tolerance[4]
    c.activate(edge, 100.0)
    assert c.mode is Mode.RUNNING
    assert c.tick(100.005, edge).position[4] < edge[4]


def test_controller_tracking_fault_stops_commands():
    c = ChunkController(CFG, T)
    c.activate(Q0, 100.0)
    far = Q0 + np.r_[0.0, 0.5, 0, 0, 0, 0, 0]
    assert c.tick(100.005, far) is None
    assert c.mode is Mode.FAULT and "joint2" in c.reason
    assert c.tick(100.010, Q0) is None


def test_config_errors_name_the_problem(tmp_path):
    good = config_path("piper.yaml").read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(good.replace("joint4: 2.0", "joint4: 9.0"))
    with pytest.raises(ConfigError, match=r"max_velocity of joint4 \(9.0 rad/s\) exceeds"):
        load_safety_config(bad)
    bad.write_text(good.replace("joint2: [0.0, 3.14]", "joint2: [1.0, 0.5]"))
    with pytest.raises(ConfigError, match="position limit of joint2 is empty"):
        load_safety_config(bad)
    bad.write_text(good.replace("    gripper: 0.1\n", ""))
    with pytest.raises(
        ConfigError, match=r"'max_velocity' must list exactly.*missing \['gripper'\]"
    ):
        load_safety_config(bad)
    bad.write_text("arm: [")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_safety_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_safety_config(tmp_path / "nope.yaml")


def test_limited_ticks_say_why_and_which_joint():
    """A target outside the soft range counts as clamped, a jump the motion bounds
    slow down as slowed, per joint; a reachable target counts as neither."""
    cfg = load_safety_config()
    f = SafetyFilter(cfg, 0.005)
    start = np.array([0.0, 0.5, -0.5, 0.0, 0.3, 0.0, 0.03])
    f.reset(start)
    same = f.step(start.copy())
    assert not same.limited and not same.clamped.any() and not same.slowed.any()
    below = start.copy()
    below[6] = -0.002  # a gripper target under its soft range (closed is 0 m)
    out = f.step(below)
    assert out.limited and out.clamped.tolist() == [False] * 6 + [True]
    jump = start.copy()
    jump[1] += 0.5  # far more than one tick allows
    out = f.step(jump)
    assert out.limited and out.slowed[1] and not out.clamped.any()


def _limited_share(noise_rad: float, replan_offset_rad: float = 0.0) -> float:
    """A chunk every 0.2 s from a slow sinusoid (0.2 rad at 0.3 Hz), stamped 60 ms
    before it arrives, 8 actions 50 ms apart, each action off by `noise_rad`, each
    chunk shifted by up to `replan_offset_rad`."""
    cfg = load_safety_config()
    period, t0 = 0.005, 1.0
    c = ChunkController(cfg, period)
    q0 = np.array([0.0, 0.8, -0.8, 0.0, 0.5, 0.0, 0.03])
    c.activate(q0, t0)
    rng = np.random.default_rng(0)
    scale = np.r_[np.ones(6), 0.1]  # metres of gripper against radians of joints

    def plan(t: float) -> np.ndarray:
        return q0 + scale * 0.2 * np.sin(2 * np.pi * 0.3 * (t - t0))

    q, limited, ticks = q0, 0, 0
    for k in range(800):
        now = t0 + k * period
        if k % 40 == 0:
            stamp, times = now - 0.06, 0.05 * np.arange(1, 9)
            points = np.stack([plan(stamp + t) for t in times])
            points += rng.normal(0.0, noise_rad, points.shape) * scale
            points += rng.uniform(-replan_offset_rad, replan_offset_rad, 7) * scale
            c.submit(JOINT_NAMES, stamp, times.tolist(), points.tolist(), now)
        command = c.tick(now, q)
        q = command.position
        if k >= 100:  # after the start from rest
            ticks += 1
            limited += command.limited
    return limited / ticks


def test_smooth_plans_are_followed_and_jittery_ones_are_limited():
    """Why a policy's plans must be smooth (docs/controller.md): the same plans with
    3 mrad of noise per action ask for more than 4 rad/s^2 at most 50 ms points."""
    assert _limited_share(0.0) < 0.02
    assert _limited_share(0.003) > 0.75


# the workspace floor (config/piper.yaml `workspace:`), here at 5 mm whatever the file
# says: joint2 from 2.0 to 2.4 rad with the others fixed moves the tool point from
# 6.7 cm above the table to 5.9 cm below it
FLOORED = replace(CFG, workspace=replace(CFG.workspace, floor_z_m=0.005))
Q_ABOVE = np.array([0.0, 2.0, -1.2, 0.0, 1.0, 0.0, 0.03])


def _descent(t0: float, n: int = 20) -> tuple[list[float], list[list[float]]]:
    offsets = [0.05 * (k + 1) for k in range(n)]
    pts = [list(Q_ABOVE + np.r_[0.0, 0.4 * (k + 1) / n, 0, 0, 0, 0, 0]) for k in range(n)]
    return offsets, pts


def _run(
    c: ChunkController, t0: float, seconds: float, plan: tuple | None = None
) -> list[np.ndarray]:
    """Tick for `seconds`; `plan` (offsets from t0, points) is sent again every 0.1 s
    (what is still ahead of it), as a policy re-plans, so the watchdog does not hold."""
    out, t = [], t0
    for i in range(int(round(seconds / T))):
        if plan is not None and i % 20 == 19:
            ahead = [(t0 + o - t, p) for o, p in zip(*plan) if t0 + o > t]
            if ahead:
                c.submit(NAMES, t, [o for o, _ in ahead], [p for _, p in ahead], t)
        t += T
        cmd = c.tick(t, None)
        assert cmd is not None, c.reason
        out.append(cmd.position)
    return out


def test_lifting_a_chunk_onto_the_floor_does_not_hold_up_the_ticks(monkeypatch):
    """`submit` lifts targets outside the controller's lock: while one is being lifted
    the ticks go on; a fault (or a re-activation) meanwhile discards the chunk."""
    workspace = type(FLOORED.workspace)
    real_lift = workspace.lift
    lifting, release = threading.Event(), threading.Event()
    submitter: list[threading.Thread] = []

    def slow_lift(self, q, lower, upper):
        if submitter and threading.current_thread() is submitter[0]:
            lifting.set()
            release.wait(10.0)
        return real_lift(self, q, lower, upper)

    monkeypatch.setattr(workspace, "lift", slow_lift)
    offsets, pts = _descent(100.0)

    def submit_in_thread(c: ChunkController, result: dict) -> threading.Thread:
        def run() -> None:
            try:
                result["chunk"] = c.submit(NAMES, 100.0, offsets, pts, 100.0)
            except ChunkRejected as exc:
                result["rejected"] = exc

        lifting.clear()
        release.clear()
        submitter[:] = [threading.Thread(target=run)]
        submitter[0].start()
        assert lifting.wait(10.0)
        return submitter[0]

    c = ChunkController(FLOORED, T)
    c.activate(Q_ABOVE, 100.0)
    result: dict = {}
    thread = submit_in_thread(c, result)
    ticks: list = []
    ticker = threading.Thread(
        target=lambda: ticks.extend(c.tick(100.0 + k * T, None) for k in (1, 2))
    )
    ticker.start()
    ticker.join(5.0)
    assert not ticker.is_alive() and thread.is_alive()  # ticked while the lift waits
    assert all(cmd is not None for cmd in ticks)
    assert np.allclose(ticks[-1].position, Q_ABOVE)  # still holding: nothing spliced yet
    release.set()
    thread.join(10.0)
    assert "chunk" in result and c.stats.floor_lifted_points > 10
    assert c.stats.chunks_accepted == 1

    result = {}
    thread = submit_in_thread(c, result)
    c.fault("test fault while lifting")
    release.set()
    thread.join(10.0)
    assert result["rejected"].reason == "not_running"
    assert c.stats.chunks_accepted == 1 and c.stats.rejections["not_running"] == 1

    assert c.reset_fault()
    c.activate(Q_ABOVE, 101.0)
    result = {}
    thread = submit_in_thread(c, result)
    c.deactivate()
    c.activate(Q_ABOVE, 101.0)
    release.set()
    thread.join(10.0)
    assert "re-activated" in str(result["rejected"])
    assert c.stats.rejections["not_running"] == 2


def test_the_floor_s_plain_float_kinematics_agree_with_the_dh_chain():
    """The workspace computes the tool point's height in plain floats (speed); it must
    be the DH chain's, and its gradient the height's finite differences."""
    ws = FLOORED.workspace
    rng = np.random.default_rng(0)
    for _ in range(50):
        q = rng.uniform(CFG.soft_lower, CFG.soft_upper)
        pose = ws.chain.end_effector(q)
        expected = pose[2, 3] + ws.tool_offset_m * pose[2, 2]
        assert ws.tool_height(q) == pytest.approx(expected, abs=1e-12)
        z, grad = ws.height_and_gradient(q)
        assert z == pytest.approx(expected, abs=1e-12)
        step = 1e-7
        numeric = [(ws.tool_height(q + step * np.eye(7)[j]) - z) / step for j in range(6)]
        assert grad == pytest.approx(numeric, abs=1e-6)


def test_targets_below_the_workspace_floor_are_lifted_onto_it():
    ws = FLOORED.workspace
    offsets, pts = _descent(100.0)
    heights = [ws.tool_height(np.array(p)) for p in pts]
    assert heights[0] > ws.floor_z_m and min(heights) < -0.05
    c = ChunkController(FLOORED, T)
    c.activate(Q_ABOVE, 100.0)
    accepted = c.submit(NAMES, 100.0, offsets, pts, 100.0)
    below = [k for k, z in enumerate(heights) if z < ws.floor_z_m]
    assert c.stats.floor_lifted_points == len(below) > 10
    for k, q in enumerate(accepted.positions):
        if k in below:
            assert ws.tool_height(q) == pytest.approx(ws.floor_z_m, abs=1e-4)
            assert q[6] == pts[k][6]  # the gripper is not touched
        else:
            assert np.array_equal(q, pts[k])  # targets above the floor stay as sent
    commands = _run(c, 100.0, 1.5, (offsets, pts))
    lowest = min(ws.tool_height(q) for q in commands)
    # the filter brakes the descent onto the floor (braking_m_s2): the command stops on
    # it, not below it (float noise: micrometres)
    assert ws.floor_z_m - 1e-4 < lowest < ws.floor_z_m + 1e-4
    assert ws.tool_height(commands[-1]) == pytest.approx(ws.floor_z_m, abs=1e-4)
    assert c.mode is Mode.RUNNING
    # without the floor the same chunk drives the tool point 6 cm into the table
    bare = ChunkController(replace(FLOORED, workspace=None), T)
    bare.activate(Q_ABOVE, 100.0)
    bare.submit(NAMES, 100.0, offsets, pts, 100.0)
    assert min(ws.tool_height(q) for q in _run(bare, 100.0, 1.5, (offsets, pts))) < -0.05


def test_a_target_no_joint_change_lifts_onto_the_floor_rejects_the_chunk():
    high = replace(FLOORED, workspace=replace(FLOORED.workspace, floor_z_m=2.0))  # out of reach
    c = ChunkController(high, T)
    c.activate(Q_ABOVE, 100.0)
    with pytest.raises(ChunkRejected, match="below the workspace floor") as info:
        c.submit(NAMES, 100.0, *_descent(100.0), 100.0)
    assert info.value.reason == "below_floor" and c.stats.rejections["below_floor"] == 1
    assert c.mode is Mode.RUNNING and c.holding  # nothing of it reaches the arm


def test_an_arm_below_the_floor_holds_and_rises_but_never_moves_further_down():
    ws = FLOORED.workspace
    low = Q_ABOVE + np.r_[0.0, 0.3, 0, 0, 0, 0, 0]  # tool point 3 cm below the table
    z_low = ws.tool_height(low)
    assert z_low < ws.floor_z_m - ws.fault_margin_m
    # the rule itself: moving down there is a fault; holding or rising is not
    deeper = low + np.r_[0.0, 0.01, 0, 0, 0, 0, 0]
    assert "below the workspace floor" in ws.fault(low, deeper)
    assert ws.fault(low, low) == "" and ws.fault(deeper, low) == ""
    c = ChunkController(FLOORED, T)
    c.activate(low, 100.0)
    held = _run(c, 100.0, 0.1)
    assert np.allclose(held[-1], low) and c.mode is Mode.RUNNING
    # a chunk further down is lifted onto the floor: the arm rises to it
    offsets = [0.05 * (k + 1) for k in range(20)]
    pts = [list(deeper) for _ in offsets]
    c.submit(NAMES, 100.1, offsets, pts, 100.1)
    commands = _run(c, 100.1, 1.0, (offsets, pts))
    heights = [ws.tool_height(q) for q in commands]
    assert min(heights) >= z_low - 1e-9
    assert heights[-1] == pytest.approx(ws.floor_z_m, abs=1e-4)
    assert c.mode is Mode.RUNNING


@pytest.mark.parametrize(
    "line, replacement, message",
    [
        ("tool_offset_m: 0.06", "tool_offset_m: -0.06", r"workspace.tool_offset_m must be >= 0"),
        ("fault_margin_m: 0.01", "", r"'workspace' must be a mapping with exactly the keys"),
        ("floor_z_m: 0.01", "floor_z_m: .nan", r"workspace.floor_z_m must be a finite number"),
        ("braking_m_s2: 0.5", "braking_m_s2: 0", r"workspace.braking_m_s2 must be > 0"),
    ],
)
def test_workspace_config_errors_name_the_file_and_key(tmp_path, line, replacement, message):
    good = config_path("piper.yaml").read_text()
    assert f"  {line}\n" in good
    bad = tmp_path / "bad.yaml"
    bad.write_text(good.replace(f"  {line}\n", f"  {replacement}\n" if replacement else ""))
    with pytest.raises(ConfigError, match=r"bad.yaml: " + message):
        load_safety_config(bad)


def test_a_limits_file_without_a_workspace_section_has_no_floor(tmp_path):
    good = config_path("piper.yaml").read_text()
    bad = tmp_path / "bad.yaml"
    start = good.index("# The workspace floor")
    end = good.index("# Kinematics")
    bad.write_text(good[:start] + good[end:])
    assert load_safety_config(bad).workspace is None


def test_a_plan_that_passes_below_the_floor_between_its_targets_is_lifted_per_tick():
    """Both targets are 1.5 cm above the floor, fingers tilted 0.5 rad either way; the
    wrist turning between them points the fingers straight down on the way, 4 mm
    below the floor. No target is lifted; the ticks on the way are."""
    ws = FLOORED.workspace
    vertical = np.array([0.0, 2.1774, -1.2, 0.0, 0.6807, 0.0, 0.03])
    tilt = np.r_[0.0, 0, 0, 0, 0.5, 0, 0]
    a, b = vertical + tilt, vertical - tilt
    assert min(ws.tool_height(a), ws.tool_height(b)) > ws.floor_z_m + 0.01
    assert ws.tool_height(vertical) < ws.floor_z_m - 0.003
    lowest = {}
    for name, cfg in (("floor", FLOORED), ("bare", replace(FLOORED, workspace=None))):
        c = ChunkController(cfg, T)
        c.activate(a, 100.0)
        commands, t = [], 100.0
        for _ in range(8):  # re-planned every 0.1 s from the command, as a policy does
            here = list(c.last_command[0])
            c.submit(NAMES, t, [0.01, 100.8 - t], [here, list(b)], t)
            commands += _run(c, t, 0.1)
            t += 0.1
        # the wrist turned through the vertical
        assert commands[-1][4] < vertical[4] - 0.3 and c.mode is Mode.RUNNING
        lowest[name] = min(ws.tool_height(q) for q in commands)
        if name == "floor":
            assert c.stats.floor_lifted_points == 0 and c.stats.floor_ticks > 0
    assert lowest["bare"] < ws.floor_z_m - 0.003
    assert lowest["floor"] > ws.floor_z_m - 1e-4, lowest
