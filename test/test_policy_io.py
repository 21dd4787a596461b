"""Policy-node cores without ROS: image decoding, observation synchronisation, the
inference loop, the launch graph, PiPER kinematics and the schematic cameras."""

from __future__ import annotations

import re
import threading
import time

import numpy as np
import pytest

from dream_vla_ros.control.kinematics import DHChain
from dream_vla_ros.data.images import (
    ImageDecodeError,
    decode_compressed,
    decode_raw,
    encode_jpeg,
)
from dream_vla_ros.graphs import LaunchError, graph, node_command, parse_arguments
from dream_vla_ros.policy.observations import (
    CameraSpec,
    Frame,
    ObservationBuffer,
    Refused,
    SyncSettings,
)
from dream_vla_ros.sim.schematic import SceneObject, SchematicScene

NAMES = ("joint1", "joint2", "joint3", "joint4", "joint5", "joint6", "gripper")
RNG = np.random.default_rng(0)


def rgb(h: int = 48, w: int = 64) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


# -- images ---------------------------------------------------------------------------------
def test_raw_encodings_give_rgb():
    img = rgb()
    h, w, _ = img.shape
    assert np.array_equal(decode_raw(h, w, "rgb8", w * 3, img.tobytes()), img)
    assert np.array_equal(decode_raw(h, w, "bgr8", w * 3, img[:, :, ::-1].tobytes()), img)
    rgba = np.concatenate([img, np.full((h, w, 1), 7, np.uint8)], axis=2)
    assert np.array_equal(decode_raw(h, w, "rgba8", w * 4, rgba.tobytes()), img)
    bgra = np.concatenate([img[:, :, ::-1], np.zeros((h, w, 1), np.uint8)], axis=2)
    assert np.array_equal(decode_raw(h, w, "bgra8", w * 4, bgra.tobytes()), img)
    mono = img[:, :, 0].copy()
    assert np.array_equal(
        decode_raw(h, w, "mono8", w, mono.tobytes()), np.repeat(mono[..., None], 3, 2)
    )


def test_raw_rows_with_padding():
    img = rgb(10, 7)
    padded = np.zeros((10, 7 * 3 + 5), np.uint8)
    padded[:, :21] = img.reshape(10, 21)
    assert np.array_equal(decode_raw(10, 7, "rgb8", 26, padded.tobytes()), img)


@pytest.mark.parametrize(
    "args, words",
    [
        ((4, 4, "16UC1", 8, bytes(32)), "unsupported encoding '16UC1'"),
        ((4, 4, "rgb8", 12, bytes(47)), "47 bytes, expected"),
        ((4, 4, "rgb8", 6, bytes(24)), "step 6 is smaller"),
        ((0, 4, "rgb8", 12, b""), "empty"),
    ],
)
def test_raw_errors_name_the_problem(args, words):
    with pytest.raises(ImageDecodeError, match=words):
        decode_raw(*args)


def test_compressed_jpeg_and_png():
    from io import BytesIO

    from PIL import Image

    img = rgb(60, 80)
    out = BytesIO()
    Image.fromarray(img).save(out, "PNG")
    assert np.array_equal(decode_compressed("png", out.getvalue()), img)
    smooth = np.tile(np.linspace(0, 255, 80, dtype=np.uint8)[None, :, None], (60, 1, 3))
    back = decode_compressed("rgb8; jpeg compressed bgr8", encode_jpeg(smooth, 95))
    assert back.shape == (60, 80, 3) and np.abs(back.astype(int) - smooth).max() < 8
    with pytest.raises(ImageDecodeError, match="cannot decode"):
        decode_compressed("jpeg", b"\xff\xd8 not really a jpeg")
    with pytest.raises(ImageDecodeError, match="unsupported compressed format 'h264'"):
        decode_compressed("h264", b"xx")
    with pytest.raises(ImageDecodeError, match="no data"):
        decode_compressed("jpeg", b"")


# -- observation buffer ---------------------------------------------------------------------
CAMS = (CameraSpec("front", "/f"), CameraSpec("wrist", "/w"))


def frame(stamp: float, image: np.ndarray | None = None, error: str = "") -> Frame:
    def decode() -> np.ndarray:
        if error:
            raise ImageDecodeError(error)
        return rgb() if image is None else image

    return Frame(stamp, stamp, decode)


def filled(now: float = 10.0, cams=CAMS, **sync) -> ObservationBuffer:
    buf = ObservationBuffer(cams, NAMES, SyncSettings(**sync))
    for k in range(20):  # joint states at 100 Hz up to `now`, in a shuffled name order
        t = now - 0.19 + 0.01 * k
        buf.add_joint_state(t, NAMES[::-1], [t] * 7)
    return buf


def test_synchronised_observation_uses_nearest_state():
    buf = filled()
    buf.add_frame("front", frame(9.953))
    buf.add_frame("wrist", frame(9.955))
    obs = buf.take(10.0)
    assert obs is not None and obs.stamp_s == 9.953 and len(obs.images) == 2
    assert obs.state == pytest.approx([9.95] * 7)  # the state nearest the front stamp
    assert buf.take(10.0) is None  # each front frame is used once


def test_waits_for_the_wrist_frame_of_the_same_moment():
    buf = filled(max_age_s=5.0, sync_tolerance_s=0.03)
    buf.add_frame("wrist", frame(9.80))
    buf.add_frame("front", frame(9.90))
    assert not buf.wait_for_new(0.0)  # the wrist camera has not caught up yet
    buf.add_frame("wrist", frame(9.901))
    assert buf.wait_for_new(0.0)
    obs = buf.take(10.0)
    assert obs is not None and obs.stamp_s == 9.90


@pytest.mark.parametrize(
    "front, wrist, reason, words",
    [
        (9.5, 9.5, "stale", "front image (/f) is 0.500 s old"),
        (9.99, 9.85, "unsynchronised", "wrist image is 0.140 s apart"),
        (9.99, None, "missing", "no image from the wrist camera (/w)"),
    ],
)
def test_refusals(front, wrist, reason, words):
    buf = filled(max_age_s=0.4, sync_tolerance_s=0.05)
    if wrist is not None:
        buf.add_frame("wrist", frame(wrist))
    buf.add_frame("front", frame(front))
    time.sleep(0.06)  # a camera that never catches up is taken after the sync tolerance
    assert buf.wait_for_new(0.0)
    with pytest.raises(Refused, match=re.escape(words)) as info:
        buf.take(10.0)
    assert info.value.reason == reason
    assert buf.take(10.0) is None  # refused once, not in a loop


def test_bad_images_and_sizes_are_refused():
    cams = (CameraSpec("front", "/f", width=64, height=48),)
    buf = filled(cams=cams)
    buf.add_frame("front", frame(9.99, error="unsupported encoding 'yuv422'"))
    with pytest.raises(Refused, match=r"front camera \(/f\): unsupported encoding 'yuv422'"):
        buf.take(10.0)
    buf.add_frame("front", frame(9.995, image=rgb(24, 32)))
    with pytest.raises(Refused, match="image is 32x24, expected 64x48"):
        buf.take(10.0)
    buf.add_frame("front", frame(9.998, image=rgb(48, 64)))
    assert buf.take(10.0) is not None  # recovers as soon as a good frame comes


def test_joint_state_problems():
    buf = ObservationBuffer(CAMS[:1], NAMES)
    assert "lacks ['gripper']" in buf.add_joint_state(1.0, NAMES[:6], [0.0] * 6)
    assert "NaN" in buf.add_joint_state(1.0, NAMES, [0.0] * 6 + [float("nan")])
    buf.add_frame("front", frame(1.0))
    with pytest.raises(Refused, match="no joint state received yet"):
        buf.take(1.01)
    buf.add_joint_state(0.5, NAMES, [0.0] * 7)
    buf.add_frame("front", frame(1.02))
    with pytest.raises(Refused, match=r"no joint state within 0\.05 s") as info:
        buf.take(1.03)
    assert info.value.reason == "stale"  # the newest state is 0.53 s old


def test_dropped_frames_are_counted():
    buf = filled()
    for k in range(5):
        buf.add_frame("front", frame(9.9 + 0.01 * k))
        buf.add_frame("wrist", frame(9.9 + 0.01 * k))
    assert buf.stats.dropped == 4
    assert buf.take(10.0).stamp_s == pytest.approx(9.94)


def test_camera_spec_validation():
    with pytest.raises(ValueError, match="kind"):
        CameraSpec("front", "/x", kind="h264")
    with pytest.raises(ValueError, match="role"):
        CameraSpec("left", "/x")
    with pytest.raises(ValueError, match="1 or 2 cameras"):
        ObservationBuffer([], NAMES)


# -- the inference loop ---------------------------------------------------------------------
def test_runner_warms_up_then_publishes_stamped_chunks():
    from dream_vla_ros.policy.policy import ActionChunk, Observation
    from dream_vla_ros.policy.runner import PolicyRunner, RunnerSettings

    seen: list[Observation] = []

    def infer(obs: Observation) -> ActionChunk:
        seen.append(obs)
        actions = np.tile(obs.state, (4, 1))
        return ActionChunk(actions, obs.stamp_s, 0.05, latency_s=0.001, clock_s=0.25)

    published: list[ActionChunk] = []
    done = threading.Event()

    def publish(chunk: ActionChunk) -> None:
        published.append(chunk)
        done.set()

    buf = filled(cams=CAMS[:1], max_age_s=100.0)
    warm = Observation([rgb()], "warm", np.zeros(7), 0.0)
    after: list[int] = []  # inferences done when the after-warm-up hook ran
    runner = PolicyRunner(
        infer,
        buf,
        publish,
        lambda: 10.0,
        "pick",
        lambda: warm,
        RunnerSettings(warmup_iterations=2),
        after_warmup=lambda: after.append(len(seen)),
    ).start()
    try:
        buf.add_frame("front", frame(9.97))
        assert done.wait(5.0)
    finally:
        runner.stop()
    assert after == [2]  # once, after both warm-ups, before the first real observation
    assert [o.instruction for o in seen[:2]] == ["warm", "warm"] and runner.ready
    assert runner.summary()["episode_clock_s"] == "0.25"  # what the model read
    assert published[0].stamp_s == 9.97 and seen[2].instruction == "pick"
    assert runner.summary()["chunks_published"] == "1"


def test_a_paused_runner_neither_infers_nor_publishes_and_resumes_on_fresh_frames():
    from dream_vla_ros.policy.policy import ActionChunk, Observation
    from dream_vla_ros.policy.runner import PolicyRunner, RunnerSettings

    calls: list[float] = []

    def infer(obs: Observation) -> ActionChunk:
        calls.append(obs.stamp_s)
        return ActionChunk(np.tile(obs.state, (4, 1)), obs.stamp_s, 0.05, latency_s=0.001)

    published: list[ActionChunk] = []
    buf = filled(cams=CAMS[:1], max_age_s=100.0)
    warm = Observation([rgb()], "warm", np.zeros(7), 0.0)
    runner = PolicyRunner(
        infer,
        buf,
        published.append,
        lambda: 10.0,
        "pick",
        lambda: warm,
        RunnerSettings(warmup_iterations=1),
    )
    runner.paused = True
    runner.start()
    try:
        deadline = time.monotonic() + 5.0
        while not runner.ready and time.monotonic() < deadline:
            time.sleep(0.01)
        for k in range(5):
            buf.add_frame("front", frame(9.90 + 0.01 * k))
            time.sleep(0.05)
        assert published == [] and calls == [0.0]  # only the warm-up ran
        assert runner.summary()["enabled"] == "False"
        runner.paused = False
        time.sleep(0.35)  # > poll_s: the loop has seen the resume before new inputs come
        for k in range(5):  # the arm's states keep coming (the pause dropped the old ones)
            buf.add_joint_state(9.93 + 0.01 * k, NAMES, [0.0] * 7)
        buf.add_frame("front", frame(9.97))
        deadline = time.monotonic() + 5.0
        while not published and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        runner.stop()
    assert [c.stamp_s for c in published] == [9.97]  # a frame from after the pause


def test_the_rate_budget_counts_capture_stamps_not_arrival_times():
    from dream_vla_ros.policy.policy import ActionChunk, Observation
    from dream_vla_ros.policy.runner import PolicyRunner, RunnerSettings

    stamps: list[float] = []

    def infer(obs: Observation) -> ActionChunk:
        if obs.instruction != "warm":
            stamps.append(round(obs.stamp_s, 3))
        return ActionChunk(np.tile(obs.state, (4, 1)), obs.stamp_s, 0.05, latency_s=0.001)

    buf = ObservationBuffer(CAMS[:1], NAMES, SyncSettings(max_age_s=100.0))
    warm = Observation([rgb()], "warm", np.zeros(7), 0.0)
    runner = PolicyRunner(
        infer, buf, lambda c: None, lambda: 12.0, "pick", lambda: warm,
        RunnerSettings(max_rate_hz=5.0, warmup_iterations=1),
    ).start()  # fmt: skip
    try:
        deadline = time.monotonic() + 5.0
        while not runner.ready and time.monotonic() < deadline:
            time.sleep(0.01)
        # a 10 Hz camera's frames arriving much faster than they were taken (a
        # backlog), each once the runner has dealt with the one before: a 5 Hz
        # budget takes every second frame (a wall-clock budget took one or two)
        for k in range(10):
            t = 10.0 + 0.1 * k
            buf.add_joint_state(t, NAMES, [t] * 7)
            buf.add_frame("front", frame(t))
            deadline = time.monotonic() + 5.0
            while len(stamps) + buf.stats.dropped < k + 1 and time.monotonic() < deadline:
                time.sleep(0.002)
    finally:
        runner.stop()
    assert stamps == [10.0, 10.2, 10.4, 10.6, 10.8]
    assert runner.stats.refused.total() == 0 and buf.stats.dropped == 5


@pytest.mark.parametrize("change", ["pause", "instruction"])
def test_a_chunk_inferred_across_a_pause_or_new_instruction_is_not_published(change):
    from dream_vla_ros.policy.policy import ActionChunk, Observation
    from dream_vla_ros.policy.runner import PolicyRunner, RunnerSettings

    started, release = threading.Event(), threading.Event()

    def infer(obs: Observation) -> ActionChunk:
        if obs.instruction != "warm":
            started.set()
            assert release.wait(5.0)
        return ActionChunk(np.tile(obs.state, (4, 1)), obs.stamp_s, 0.05, latency_s=0.001)

    published: list[ActionChunk] = []
    buf = filled(cams=CAMS[:1], max_age_s=100.0)
    warm = Observation([rgb()], "warm", np.zeros(7), 0.0)
    runner = PolicyRunner(
        infer, buf, published.append, lambda: 10.0, "pick", lambda: warm,
        RunnerSettings(warmup_iterations=1),
    ).start()  # fmt: skip
    try:
        buf.add_frame("front", frame(9.97))
        assert started.wait(5.0)  # inference is running on the 9.97 frame
        if change == "pause":
            runner.paused = True  # the node's `enabled` false
        else:
            runner.set_instruction("place it")
        release.set()
        deadline = time.monotonic() + 5.0
        while runner.stats.discarded == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        runner.stop()
    assert published == [] and runner.stats.discarded == 1
    assert runner.summary()["discarded_chunks"] == "1"


# -- launch graph ---------------------------------------------------------------------------
def test_graph_arguments_and_commands():
    g = graph("sim")
    values = parse_arguments(g, ["instruction:=touch the red cube", "camera_format:=compressed"])
    cmds = {n.name: node_command(n, values) for n in g.nodes}
    assert set(cmds) == {"controller", "sim_camera", "policy"}
    policy = cmds["policy"]
    assert "instruction:='touch the red cube'" in policy
    assert "cameras.kinds:=['compressed', 'compressed']" in policy
    assert "model.checkpoint:=''" in policy
    assert any(a.endswith("config/policy_sim.yaml") for a in policy)
    assert "arm.backend:='sim'" in cmds["controller"]
    # arguments left empty keep the node's own value (its table or parameter file)
    assert not any("rate_hz" in a or "device" in a for a in cmds["sim_camera"] + policy)
    values = parse_arguments(g, ["camera_rate_hz:=8.0", "device:=cpu"])
    assert "rate_hz:=8.0" in node_command(g.node("sim_camera"), values)
    assert "device:='cpu'" in node_command(g.node("policy"), values)
    # simulated graphs publish joint states at 50 Hz (2-core hosts, docs/policy_node.md);
    # the real arm's graph keeps the node's 200 Hz default
    for name in ("sim", "collect", "collect_world", "sim_world"):
        sim_graph = graph(name)
        controller = node_command(sim_graph.node("controller"), parse_arguments(sim_graph, []))
        assert "joint_state_rate_hz:=50.0" in controller, name
    real = graph("bringup")
    controller = node_command(real.node("controller"), parse_arguments(real, ["checkpoint:=/x"]))
    assert not any("joint_state_rate_hz" in a for a in controller)


@pytest.mark.parametrize(
    "name, argv, words",
    [
        ("sim", ["colour:=red"], "'colour' is not an argument of 'sim'"),
        ("sim", ["camera_format:=h264"], "is not one of raw, compressed"),
        ("sim", ["instruction"], "is not name:=value"),
        ("sim", ["camera_rate_hz:=fast"], "rate_hz needs a number"),
        ("bringup", [], "'bringup' needs checkpoint:=VALUE"),
        ("moon", [], "unknown graph 'moon'"),
    ],
)
def test_bad_launch_arguments(name, argv, words):
    with pytest.raises(LaunchError, match=words):
        g = graph(name)
        for node in g.nodes:
            node_command(node, parse_arguments(g, argv))


# -- kinematics and the schematic cameras ---------------------------------------------------
def test_forward_kinematics_matches_the_vendor_sdk():
    from piper_sdk.kinematics.piper_fk import C_PiperForwardKinematics

    vendor = C_PiperForwardKinematics(1)
    chain = DHChain.load()
    for q in RNG.uniform(-1.0, 1.0, (5, 6)):
        ours = chain.end_effector(q)[:3, 3] * 1000.0
        assert ours == pytest.approx(vendor.CalFK(list(q))[-1][:3], abs=1e-6)


def test_rendered_images_follow_the_arm_and_the_objects():
    scene = SchematicScene()
    home = np.array([0.0, 0.6, -0.6, 0.0, 0.3, 0.0, 0.02])
    moved = home + np.array([0.4, 0.3, -0.2, 0.0, 0.2, 0.0, 0.0])
    front, wrist = scene.render_front(home), scene.render_wrist(home)
    assert front.shape == (480, 640, 3) and front.dtype == np.uint8 and front.std() > 10
    changed_front = np.mean(np.any(front != scene.render_front(moved), axis=2))
    changed_wrist = np.mean(np.any(wrist != scene.render_wrist(moved), axis=2))
    assert changed_front > 0.002 and changed_wrist > 0.2
    other = SchematicScene(objects=(SceneObject("red cube", (0.2, 0.25, 0.02), (200, 30, 30)),))
    assert np.mean(np.any(other.render_front(home) != front, axis=2)) > 0.0005
