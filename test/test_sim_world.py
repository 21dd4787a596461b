"""The MuJoCo world, the touch task and its expert, and the sim_world node."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dream_vla_ros.control import load_safety_config
from dream_vla_ros.control.kinematics import DHChain
from dream_vla_ros.sim.task import (
    COLOURS,
    HOME,
    MIN_SEPARATION_M,
    START_X,
    START_Y,
    START_Z,
    TOUCH_HEIGHT_M,
    SuccessMonitor,
    TouchExpert,
    fingertip,
    sample_layout,
    start_pose,
)
from dream_vla_ros.sim.world import PiperWorld

W, H = 160, 120


@pytest.fixture(scope="module")
def world():
    w = PiperWorld(width=W, height=H)
    yield w
    w.close()


def colour_mask(image: np.ndarray, colour: str) -> np.ndarray:
    rgb = image.astype(int)
    channel = {"red": 0, "green": 1, "blue": 2}[colour]
    others = [c for c in range(3) if c != channel]
    return (rgb[..., channel] > 120) & np.all(rgb[..., others] < 0.6 * rgb[..., [channel]], -1)


def test_world_kinematics_equal_the_dh_chain(world):
    chain = DHChain.load()
    rng = np.random.default_rng(0)
    limits = load_safety_config()
    for _ in range(20):
        q = rng.uniform(limits.soft_lower, limits.soft_upper)
        world.set_joints(q)
        assert np.allclose(world.flange_pose(), chain.end_effector(q), atol=1e-5)
        assert np.allclose(world.fingertip(), fingertip(chain, q)[0], atol=1e-5)


def test_images_change_with_the_arm_and_with_the_objects(world):
    layout = sample_layout(3)
    world.set_cubes(layout.cubes)
    front = world.render_front(HOME)
    wrist = world.render_wrist(HOME)
    for image in (front, wrist):
        assert image.shape == (H, W, 3) and image.dtype == np.uint8
        assert image.std() > 15  # not black, not flat
    # every cube is visible from the front camera
    for colour in COLOURS:
        assert colour_mask(front, colour).sum() > 10, colour
    # the arm moves: both views change
    moved = HOME + np.array([0.5, 0.3, -0.2, 0.0, 0.2, 0.0, 0.0])
    assert np.abs(world.render_front(moved).astype(int) - front).mean() > 1.0
    assert np.abs(world.render_wrist(moved).astype(int) - wrist).mean() > 5.0
    # an object moves: the red pixels move with it
    before = np.argwhere(colour_mask(front, "red")).mean(0)
    shifted = dict(layout.cubes)
    shifted["red"] = layout.cubes["red"] + np.array(
        [0.0, 0.12 if layout.cubes["red"][1] < 0 else -0.12, 0.0]
    )
    world.set_cubes(shifted)
    after_image = world.render_front(HOME)
    after = np.argwhere(colour_mask(after_image, "red")).mean(0)
    assert np.linalg.norm(after - before) > 5, (before, after)
    world.set_cubes(layout.cubes)
    assert np.array_equal(world.render_front(HOME), front)  # and nothing else changed


def test_layouts_are_seeded_and_separated():
    a, b = sample_layout(11), sample_layout(11)
    assert a.target == b.target and all(np.array_equal(a.cubes[c], b.cubes[c]) for c in COLOURS)
    targets = set()
    for seed in range(40):
        layout = sample_layout(seed)
        targets.add(layout.target)
        pts = [layout.cubes[c][:2] for c in COLOURS]
        for i in range(3):
            for j in range(i + 1, 3):
                assert np.linalg.norm(pts[i] - pts[j]) >= MIN_SEPARATION_M
        assert layout.instruction == f"touch the {layout.target} cube"
    assert targets == set(COLOURS)
    # a named target keeps the seed's cubes
    for colour in COLOURS:
        named = sample_layout(11, colour)
        assert named.target == colour and named.instruction == f"touch the {colour} cube"
        assert all(np.array_equal(named.cubes[c], a.cubes[c]) for c in COLOURS)
    with pytest.raises(ValueError, match="unknown target colour 'purple'"):
        sample_layout(11, "purple")


def test_the_expert_touches_the_named_cube_and_only_it():
    chain = DHChain.load()
    limits = load_safety_config()
    lower, upper = np.asarray(limits.soft_lower), np.asarray(limits.soft_upper)
    for seed, colour in [(s, c) for s in range(12) for c in COLOURS]:
        layout = sample_layout(seed, colour)
        expert = TouchExpert(layout, lower, upper, chain=chain)
        expert.start(10.0, HOME)
        monitor = SuccessMonitor(layout)
        times = 10.0 + np.arange(0.0, expert.duration_s + 0.3, 0.02)
        poses = expert.preview(10.0, times)
        assert np.all(poses[:, :6] >= lower[:6]) and np.all(poses[:, :6] <= upper[:6])
        assert np.abs(np.diff(poses[:, :6], axis=0)).max() / 0.02 < 1.5  # joint speed limit
        for q in poses:
            monitor.update(q)
        assert monitor.outcome.success, (seed, monitor.outcome)
        # it ends with the fingertip TOUCH_HEIGHT_M above the named cube's top, pointing down
        tip, pointing = fingertip(chain, poses[-1])
        assert np.abs(tip - (layout.top(colour) + [0, 0, TOUCH_HEIGHT_M])).max() < 2e-3
        assert pointing[2] < -0.99
        # a monitor watching a different target calls the same motion a failure
        other = next(c for c in COLOURS if c != layout.target)
        wrong = SuccessMonitor(type(layout)(layout.seed, layout.cubes, other))
        for q in poses:
            wrong.update(q)
        assert not wrong.outcome.success and wrong.outcome.touched == layout.target


def test_random_start_poses_are_seeded_reachable_and_lead_to_the_named_cube():
    limits = load_safety_config()
    lower, upper = np.asarray(limits.soft_lower), np.asarray(limits.soft_upper)
    chain = DHChain.load()
    assert np.array_equal(start_pose(5, lower, upper, chain), start_pose(5, lower, upper, chain))
    tips = []
    for seed in range(24):
        pose = start_pose(seed, lower, upper, chain)
        assert pose.shape == (7,) and pose[6] == HOME[6]
        assert np.all(pose[:6] >= lower[:6]) and np.all(pose[:6] <= upper[:6])
        tip, _ = fingertip(chain, pose)
        for value, (lo, hi) in zip(tip, (START_X, START_Y, START_Z)):
            assert lo - 3e-3 <= value <= hi + 3e-3, (seed, tip)
        tips.append(tip)
        # the expert returns the arm there from home (rest pose) ...
        rest = TouchExpert(None, lower, upper, chain=chain, rest=pose)
        rest.start(0.0, HOME)
        assert np.allclose(rest.command(rest.duration_s + 0.1)[:6], pose[:6])
        # ... and from there touches the named cube, and only it
        layout = sample_layout(seed, COLOURS[seed % 3])
        expert = TouchExpert(layout, lower, upper, chain=chain)
        expert.start(0.0, pose)
        monitor = SuccessMonitor(layout, chain)
        monitor.update(pose)
        assert monitor.touched == "", (seed, "starts within touching distance")
        times = np.arange(0.0, expert.duration_s + 0.3, 0.02)
        poses = expert.preview(0.0, times)
        assert np.abs(np.diff(poses[:, :6], axis=0)).max() / 0.02 < 1.5  # joint speed limit
        for q in poses:
            monitor.update(q)
        assert monitor.outcome.success, (seed, monitor.outcome)
    # the starts spread over the area (not one point)
    assert np.ptp(np.array(tips), axis=0).min() > 0.05
    with pytest.raises(ValueError, match="rest pose must be 7 finite values"):
        TouchExpert(None, lower, upper, chain=chain, rest=np.array([0.0, np.nan]))


@pytest.mark.ros
def test_sim_world_node_publishes_cameras_and_the_task():
    import threading
    import time

    from rclpy.qos import DurabilityPolicy, QoSProfile, qos_profile_sensor_data
    from rosutil import NodeProcess, wait_for
    from sensor_msgs.msg import Image, JointState
    from std_msgs.msg import String

    from dream_vla_ros.control import JOINT_NAMES
    from dream_vla_ros.ros.client import GraphClient
    from dream_vla_ros.ros.conversions import joint_state

    client = GraphClient("sim_world_test")
    lock = threading.Lock()
    images: dict[str, list[Image]] = {"front": [], "wrist": []}
    tasks: list[dict] = []

    def keep(role):
        def on(msg):
            with lock:
                images[role].append(msg)

        return on

    node = client.node
    node.create_subscription(Image, "/w/front", keep("front"), qos_profile_sensor_data)
    node.create_subscription(Image, "/w/wrist", keep("wrist"), qos_profile_sensor_data)
    latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    node.create_subscription(
        String, "/sim_world/task", lambda m: tasks.append(json.loads(m.data)), latched
    )
    states = node.create_publisher(JointState, "/w/joint_states", 10)
    proc = NodeProcess(
        "dream_vla_ros.ros.sim_world_node",
        {
            "width": W,
            "height": H,
            "rate_hz": 10.0,
            "front_topic": "/w/front",
            "wrist_topic": "/w/wrist",
            "joint_state_topic": "/w/joint_states",
            "task.seed": 4,
        },
        "sim_world",
    )
    try:
        wait_for(lambda: bool(tasks), 60, f"the task layout\n{proc.output()}")
        assert tasks[-1]["seed"] == 4 and tasks[-1]["instruction"] == sample_layout(4).instruction
        stamp = client.now()
        for _ in range(60):
            stamp = client.now()
            states.publish(joint_state(stamp, JOINT_NAMES, HOME))
            time.sleep(0.05)
            with lock:
                if images["front"] and images["wrist"]:
                    break
        assert images["front"] and images["wrist"], proc.output()
        with lock:
            first = np.frombuffer(bytes(images["front"][-1].data), np.uint8).reshape(H, W, 3)
        assert first.std() > 15
        # a new layout at run time: new task message, new picture
        _set(client, "sim_world", "task.seed", 9)
        wait_for(lambda: tasks[-1]["seed"] == 9, 20, "the new layout")
        assert tasks[-1]["target"] == sample_layout(9).target
        # another cube named at run time: same cubes, new instruction; bad colours refused
        other = next(c for c in COLOURS if c != sample_layout(9).target)
        _set(client, "sim_world", "task.target", other)
        wait_for(lambda: tasks[-1]["target"] == other, 20, "the new target")
        assert tasks[-1]["instruction"] == f"touch the {other} cube"
        assert tasks[-1]["cubes"] == {c: p.tolist() for c, p in sample_layout(9).cubes.items()}
        reason = _set(client, "sim_world", "task.target", "purple", expect=False)
        assert "unknown target colour 'purple'" in reason
        assert tasks[-1]["target"] == other
        with lock:
            images["front"].clear()
        for _ in range(60):
            states.publish(joint_state(client.now(), JOINT_NAMES, HOME))
            time.sleep(0.05)
            with lock:
                if images["front"]:
                    break
        with lock:
            second = np.frombuffer(bytes(images["front"][-1].data), np.uint8).reshape(H, W, 3)
        assert np.abs(second.astype(int) - first).mean() > 0.5
    finally:
        proc.stop()
        client.close()


def _set(client, node: str, name: str, value: bool | int | str, expect: bool = True) -> str:
    from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
    from rcl_interfaces.srv import SetParameters

    if isinstance(value, bool):
        pv = ParameterValue(type=ParameterType.PARAMETER_BOOL, bool_value=value)
    elif isinstance(value, int):
        pv = ParameterValue(type=ParameterType.PARAMETER_INTEGER, integer_value=value)
    else:
        pv = ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=value)
    param = Parameter(name=name, value=pv)
    reply = client.call(
        SetParameters, f"/{node}/set_parameters", SetParameters.Request(parameters=[param]), 20.0
    )
    assert reply.results[0].successful == expect, reply.results[0].reason
    return reply.results[0].reason


@pytest.mark.ros
def test_the_expert_solves_layouts_through_the_controller_and_the_can_simulator(tmp_path):
    """teleop (touch_expert) -> controller -> piper_sdk -> virtual CAN -> firmware
    simulator -> /joint_states: the measured arm touches the named cube; a plan
    built under task.hold waits for the release."""
    import threading
    import time

    from rosutil import wait_for
    from sensor_msgs.msg import JointState

    from dream_vla_ros.control import JOINT_NAMES
    from dream_vla_ros.graphs import COLLECT_WORLD, Graph, parse_arguments
    from dream_vla_ros.launcher import Launcher
    from dream_vla_ros.ros.client import GraphClient

    g = Graph(
        "world",
        "controller, sim_world, expert",
        (),
        tuple(COLLECT_WORLD.node(n) for n in ("controller", "sim_world", "teleop")),
    )
    values = parse_arguments(COLLECT_WORLD, ["camera_width:=96", "camera_height:=72"])
    log = open(tmp_path / "world.log", "w")  # noqa: SIM115
    launcher = Launcher(g, values, out=log, grace_s=5.0).start()
    client = GraphClient("expert_test")
    lock = threading.Lock()
    latest: list[np.ndarray] = []
    monitor: list[SuccessMonitor] = []

    def on_state(msg: JointState) -> None:
        index = {n: i for i, n in enumerate(msg.name)}
        q = np.array([msg.position[index[n]] for n in JOINT_NAMES])
        with lock:
            latest[:] = [q]
            if monitor:
                monitor[0].update(q)

    client.node.create_subscription(JointState, "/joint_states", on_state, 50)

    def at_home() -> bool:
        with lock:
            return bool(latest) and np.abs(latest[0][:6] - HOME[:6]).max() < 0.03

    try:
        wait_for(at_home, 90, "the expert to bring the arm home")
        for seed in (2, 5):
            layout = sample_layout(seed)
            with lock:
                monitor[:] = [SuccessMonitor(layout)]
            _set(client, "sim_world", "task.seed", seed)
            if seed == 2:  # planned under task.hold: the arm waits for the release
                _set(client, "teleop", "task.hold", True)
                _set(client, "teleop", "task.seed", seed)
                time.sleep(1.0)
                assert at_home(), "the arm moved while its expert was held"
                _set(client, "teleop", "task.hold", False)
            else:
                _set(client, "teleop", "task.seed", seed)
            time.sleep(3.7 + 2.0)  # the expert's move plus tracking lag
            with lock:
                outcome = monitor[0].outcome
                monitor.clear()
            assert outcome.success, (seed, outcome)
            _set(client, "teleop", "task.seed", -1)
            wait_for(at_home, 30, "home again")
    finally:
        client.close()
        launcher.shutdown()
        log.close()
