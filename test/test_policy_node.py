"""The policy node, the controller and the launcher in real processes over local DDS,
with the real (tiny, random-weights) Dream-VLA model on the CPU."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
from rcl_interfaces.srv import SetParameters
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rosutil import ROOT, NodeProcess, wait_for
from sensor_msgs.msg import Image, JointState
from trajectory_msgs.msg import JointTrajectory

from dream_vla_ros.control import JOINT_NAMES
from dream_vla_ros.graphs import Graph, NodeSpec
from dream_vla_ros.launcher import Launcher
from dream_vla_ros.policy.random_checkpoint import write_random_checkpoint
from dream_vla_ros.ros.client import GraphClient
from dream_vla_ros.ros.conversions import (
    duration_to_sec,
    image_message,
    joint_state,
    time_to_sec,
)

pytestmark = pytest.mark.ros

HOME = np.array([0.0, 0.6, -0.6, 0.0, 0.3, 0.0, 0.02])
W, H = 64, 48
STILL = np.random.default_rng(7).integers(0, 256, (H, W, 3), dtype=np.uint8)
POLICY = "dream_vla_ros.ros.policy_node"
BASE_PARAMS = {
    "model.allow_random_weights": True,
    "model.head": "l1",
    "device": "cpu",
    "dtype": "fp32",
    "torch_threads": 1,
    "warmup_iterations": 1,
    "diagnostics_period_s": 0.2,
    "max_inference_rate_hz": 10.0,
    "max_observation_age_s": 0.5,
    "sync_tolerance_s": 0.05,
}


class Watch:
    """Chunks and diagnostics as the test process sees them."""

    def __init__(self, client: GraphClient) -> None:
        self.lock = threading.Lock()
        self.chunks: list[tuple[float, JointTrajectory]] = []  # (arrival, msg)
        self.diag: dict[str, tuple[str, dict[str, str]]] = {}
        self.messages: list[str] = []  # every policy diagnostics message, in order
        self.commands: list[tuple[float, np.ndarray]] = []
        self.client = client
        node = client.node
        reliable = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)
        node.create_subscription(JointTrajectory, "/dream_vla/action_chunk", self._on_chunk, 50)
        node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 50)
        node.create_subscription(JointState, "/controller/command", self._on_command, reliable)

    def _on_chunk(self, msg: JointTrajectory) -> None:
        with self.lock:
            self.chunks.append((self.client.now(), msg))

    def _on_diag(self, msg: DiagnosticArray) -> None:
        with self.lock:
            for s in msg.status:
                self.diag[s.name] = (s.message, {kv.key: kv.value for kv in s.values})
                if s.name == "dream_vla/policy":
                    self.messages.append(s.message)

    def _on_command(self, msg: JointState) -> None:
        with self.lock:
            self.commands.append((time_to_sec(msg.header.stamp), np.array(msg.position)))

    def policy(self) -> tuple[str, dict[str, str]]:
        with self.lock:
            return self.diag.get("dream_vla/policy", ("", {}))

    def policy_said(self, words: tuple[str, ...], since: int) -> bool:
        """One of `words` in a policy message received after the first `since` ones (the
        latest message alone can be another refusal on a host that stalls the feeder)."""
        with self.lock:
            return any(w in m for m in self.messages[since:] for w in words)

    def n_messages(self) -> int:
        with self.lock:
            return len(self.messages)

    def controller(self) -> dict[str, str]:
        with self.lock:
            return self.diag.get("dream_vla/controller", ("", {}))[1]

    def n_chunks(self) -> int:
        with self.lock:
            return len(self.chunks)


class Feeder:
    """Publishes joint states (50 Hz) and camera images (10 Hz) from the test process."""

    def __init__(self, client: GraphClient, topics: dict[str, str], states: bool = True) -> None:
        self.client = client
        self.pubs = {
            role: client.node.create_publisher(Image, topic, qos_profile_sensor_data)
            for role, topic in topics.items()
        }
        self.state_pub = client.node.create_publisher(JointState, "/joint_states", 10)
        self.make = {role: self.good for role in topics}
        self.stamps: list[float] = []
        self.states = states
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def still(stamp: float) -> Image:
        """The same picture every frame: chunks change only with the arm's state."""
        return image_message(stamp, STILL)

    @staticmethod
    def good(stamp: float) -> Image:
        rng = np.random.default_rng(int(stamp * 10) % 1000)
        return image_message(stamp, rng.integers(0, 256, (H, W, 3), dtype=np.uint8))

    def _run(self) -> None:
        k = 0
        while not self._stop.is_set():
            now = self.client.now()
            if self.states:
                self.state_pub.publish(joint_state(now, JOINT_NAMES, HOME))
            if k % 5 == 0:
                for role, pub in self.pubs.items():
                    make = self.make.get(role)
                    msg = make(now) if make else None
                    if msg is not None:
                        pub.publish(msg)
                        if role == "front":
                            self.stamps.append(time_to_sec(msg.header.stamp))
            k += 1
            time.sleep(0.02)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)


@pytest.fixture
def client():
    node = GraphClient("policy_test")
    yield node
    node.close()


def _start(params: dict, name: str) -> NodeProcess:
    return NodeProcess(POLICY, {**BASE_PARAMS, **params}, name)


def _wait_ready(watch: Watch, proc: NodeProcess, timeout: float = 90.0) -> None:
    def ready() -> bool:
        assert proc.alive(), proc.output()
        return watch.policy()[1].get("ready") == "True"

    wait_for(ready, timeout, "the policy to warm up\n")


def test_inputs_refused_with_a_reason_and_recovery(client):
    watch = Watch(client)
    proc = _start(
        {
            "cameras.topics": ["/t1/front", "/t1/wrist"],
            "cameras.kinds": ["raw", "raw"],
            "cameras.roles": ["front", "wrist"],
            "cameras.widths": [W, W],
            "cameras.heights": [H, H],
        },
        "policy_inputs",
    )
    feed = Feeder(client, {"front": "/t1/front", "wrist": "/t1/wrist"})
    try:
        _wait_ready(watch, proc)
        wait_for(
            lambda: watch.n_chunks() >= 3,
            45,
            lambda: f"chunks from good inputs: {watch.policy()}\n{proc.output()}",
        )
        with watch.lock:
            _, first = watch.chunks[0]
        assert time_to_sec(first.header.stamp) in feed.stamps  # the capture stamp
        assert list(first.joint_names) == list(JOINT_NAMES) and len(first.points) == 8
        offsets = [duration_to_sec(p.time_from_start) for p in first.points]
        assert offsets == pytest.approx([0.05 * (k + 1) for k in range(8)])

        def bad_encoding(stamp):
            msg = Feeder.good(stamp)
            msg.encoding = "yuv422"
            return msg

        def short_data(stamp):
            msg = Feeder.good(stamp)
            msg.data = bytes(100)
            return msg

        def small(stamp):
            return image_message(stamp, np.zeros((24, 32, 3), np.uint8))

        def old(stamp):
            return Feeder.good(stamp - 2.0)

        stale_front = ("front image (/t1/front) is", "front camera (/t1/front) stale")
        cases = [
            ("missing wrist", {"wrist": None}, ("wrist camera",)),
            ("stale", {"front": old, "wrist": old}, stale_front),
            ("wrong encoding", {"wrist": bad_encoding}, ("unsupported encoding 'yuv422'",)),
            ("truncated data", {"front": short_data}, ("data has 100 bytes",)),
            ("wrong size", {"wrist": small}, ("image is 32x24, expected 64x48",)),
        ]
        for label, makers, words in cases:
            feed.make = {"front": Feeder.good, "wrist": Feeder.good, **makers}
            time.sleep(0.6)  # let chunks already in flight land
            before, said = watch.n_chunks(), watch.n_messages()
            wait_for(
                lambda w=words, n=said: watch.policy_said(w, n),
                30,  # a starved CI host ran inference at p95 1.8 s
                lambda w=words, lb=label: f"'{w}' ({lb}): {watch.policy()}",
            )
            time.sleep(1.0)
            assert watch.n_chunks() == before, f"{label}: the node published anyway"
            assert proc.alive(), proc.output()
        values = watch.policy()[1]
        assert int(values["refused.bad_image"]) >= 3 and int(values["refused.stale"]) >= 1
        feed.make = {"front": Feeder.good, "wrist": Feeder.good}
        before = watch.n_chunks()
        wait_for(lambda: watch.n_chunks() >= before + 3, 45, "chunks after the inputs recover")
    finally:
        feed.stop()
        assert proc.stop() == 0, proc.output()


def _set_delay(client: GraphClient, seconds: float) -> None:
    request = SetParameters.Request()
    value = ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=seconds)
    request.parameters = [Parameter(name="debug.inference_delay_s", value=value)]
    result = client.call(SetParameters, "/policy/set_parameters", request)
    assert result.results[0].successful


def test_latency_is_compensated_not_accumulated(client, tmp_path):
    """With an inference delay the chunk keeps the capture stamp: the controller drops
    the points already in the past and follows the time-aligned target; a chunk
    whose every point is past (delay > horizon) is not executed at all."""
    watch = Watch(client)
    controller = NodeProcess(
        "dream_vla_ros.ros.controller_node",
        {
            "arm.backend": "sim",
            "arm.can_name": "lat",
            "auto_enable": True,
            "arm.feedback_timeout_s": 1.0,
            "sim.max_tracking_error_rad": 0.5,
        },
        "controller_latency",
    )
    delay = 0.15  # 3 of the 8 points (0.05 s apart) are past on arrival
    # Random weights acting in a narrow box around home: consecutive points stay
    # within the controller's velocity limit, so the command can follow the target
    # and the comparison below measures timing, not the limits.
    checkpoint = write_random_checkpoint(
        tmp_path / "model", "tiny", head="l1", action_box=(HOME, [0.03] * 6 + [0.005])
    )
    proc = _start(
        {
            "model.checkpoint": str(checkpoint),
            "cameras.topics": ["/t2/front"],
            "cameras.kinds": ["raw"],
            "cameras.roles": ["front"],
            "debug.inference_delay_s": delay,
        },
        "policy_latency",
    )
    feed = Feeder(client, {"front": "/t2/front"}, states=False)  # the controller publishes them
    # a steady scene: a new random picture every frame would make every chunk jump,
    # and the comparison below would measure the splice limits instead of the timing
    feed.make = {"front": Feeder.still}
    try:
        _wait_ready(watch, proc)
        try:
            wait_for(lambda: int(watch.controller().get("chunks_accepted", 0)) >= 8, 60, "chunks")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {watch.controller()} {watch.policy()}") from None
        with watch.lock:
            chunks = list(watch.chunks)
            commands = list(watch.commands)
        for arrival, msg in chunks:
            stamp = time_to_sec(msg.header.stamp)
            assert stamp in feed.stamps
            assert arrival - stamp >= delay - 0.01  # published late, stamped at capture
        # The commanded position follows the chunk sampled at the command's own time
        # (points k with stamp + (k+1)*dt), not the chunk replayed from its arrival.
        aligned, shifted = [], []
        for t, q in commands:
            active = [(a, m) for a, m in chunks if a < t - 0.02]
            if len(active) < 2:
                continue
            arrival, msg = active[-1]
            stamp = time_to_sec(msg.header.stamp)
            times = np.array([stamp + duration_to_sec(p.time_from_start) for p in msg.points])
            pts = np.array([p.positions for p in msg.points])
            for out, t0 in ((aligned, 0.0), (shifted, arrival - stamp)):
                ref = [np.interp(t - t0, times, pts[:, j]) for j in range(6)]
                out.append(np.abs(q[:6] - ref).max())
        assert len(aligned) > 100
        err_aligned, err_shifted = np.median(aligned), np.median(shifted)
        print(
            f"median |command - target|: aligned {err_aligned:.4f} rad, "
            f"replayed from arrival {err_shifted:.4f} rad"
        )
        assert err_aligned < 0.02
        assert err_aligned <= err_shifted + 1e-3

        _set_delay(client, 0.6)  # longer than the 0.4 s horizon: every point is past
        time.sleep(1.5)
        accepted = int(watch.controller()["chunks_accepted"])
        expired = int(watch.controller().get("rejected.expired", 0))
        with watch.lock:
            start = len(watch.commands)
        time.sleep(1.0)  # >= 200 held commands at 200 Hz
        # three more expired chunks (a starved host slows the policy node: wait for them)
        wait_for(
            lambda: int(watch.controller().get("rejected.expired", 0)) >= expired + 3,
            45.0,
            "three chunks refused as expired",
        )
        assert int(watch.controller()["chunks_accepted"]) == accepted
        with watch.lock:
            held = np.array([q for _, q in watch.commands[start:]])
        assert len(held) > 100 and np.ptp(held[:, :6], axis=0).max() < 1e-6  # holding
    finally:
        feed.stop()
        codes = proc.stop(), controller.stop()  # both, before either assertion
        assert codes[0] == 0, proc.output()
        assert codes[1] == 0, controller.output()


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry.name))
    return out


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_launcher_runs_the_sim_graph_and_leaves_nothing_behind(client):
    watch = Watch(client)
    measured: list[np.ndarray] = []
    client.node.create_subscription(
        JointState, "/joint_states", lambda m: measured.append(np.array(m.position)), 10
    )
    launcher = subprocess.Popen(
        [sys.executable, "-m", "dream_vla_ros.cli", "launch", "sim", "camera_rate_hz:=8.0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(launcher.stdout), daemon=True)
    reader.start()
    try:
        wait_for(lambda: len(_children(launcher.pid)) == 3, 20, "three node processes")
        children = _children(launcher.pid)
        wait_for(
            lambda: int(watch.controller().get("chunks_accepted", 0)) >= 5,
            120,
            "policy chunks accepted by the controller",
        )
        wait_for(
            lambda: (
                len(measured) > 10 and np.ptp(np.array(measured[5:])[:, :6], axis=0).max() > 0.02
            ),
            30,
            "the simulated arm to move",
        )
        assert launcher.poll() is None
    finally:
        if launcher.poll() is None:
            launcher.send_signal(signal.SIGINT)
        rc = launcher.wait(30)
        reader.join(5)
    output = "".join(lines)
    assert rc == 0, output
    assert not [pid for pid in children if _running(pid)], output
    assert "[policy]" in output and "[controller]" in output


def test_launcher_stops_the_graph_when_a_node_dies():
    cam = "dream_vla_ros.ros.sim_camera_node"
    g = Graph(
        "pair",
        "two cheap nodes",
        (),
        (
            NodeSpec("cam_a", cam, "sim_camera_node", ()),
            NodeSpec("cam_b", cam, "sim_camera_node", ()),
        ),
    )
    log = open(os.devnull, "w")  # noqa: SIM115 - closed below
    launcher = Launcher(g, {}, out=log, grace_s=5.0).start()
    try:
        wait_for(lambda: all(c.alive() for c in launcher.children), 10, "both nodes")
        time.sleep(2.0)
        os.kill(launcher.children[0].proc.pid, signal.SIGKILL)
        rc = launcher.run(poll_s=0.05)
    finally:
        log.close()
    assert rc != 0 and "cam_a" in launcher.failed
    assert not any(c.alive() for c in launcher.children)


def test_guidance_without_an_instruction_dropout_checkpoint_stops_the_node_at_start(tmp_path):
    """Classifier-free guidance on a checkpoint that never learnt the masked-instruction
    prompt would extrapolate from noise: the node refuses to start and says why."""
    ckpt = write_random_checkpoint(tmp_path / "flow", head="flow")
    proc = _start({"model.checkpoint": str(ckpt), "flow_guidance_scale": 2.0}, "guided")
    wait_for(lambda: not proc.alive(), 60, lambda: "the node to exit\n" + proc.output())
    assert proc.stop() == 1
    assert "instruction_dropout > 0" in proc.output(), proc.output()
    assert "Traceback" not in proc.output()
