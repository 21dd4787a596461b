"""The controller node in a real process over local DDS, driving the real piper_sdk
against the CAN-level firmware simulator. The test process publishes chunks and
checks what the node measured (/joint_states) and sent (~/command)."""

from __future__ import annotations

import math
import threading
import time

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from margins import within
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rosutil import NodeProcess, wait_for
from sensor_msgs.msg import JointState
from std_srvs.srv import SetBool, Trigger
from trajectory_msgs.msg import JointTrajectory

from dream_vla_ros.control import JOINT_NAMES, load_safety_config
from dream_vla_ros.control.controller import MAX_TICK_GAP_PERIODS
from dream_vla_ros.ros.client import GraphClient
from dream_vla_ros.ros.conversions import chunk_message, time_to_sec

pytestmark = pytest.mark.ros

CFG = load_safety_config()
RATE_HZ = 200.0
PERIOD = 1.0 / RATE_HZ
START = np.array([0.0, 0.6, -0.6, 0.0, 0.3, 0.0, 0.02])
EPS = 1e-6
MIN_SAMPLES = 40  # in 2.7 s: an effective 15 Hz, enough to judge tracking
MAX_GAP = MAX_TICK_GAP_PERIODS * PERIOD  # the longest step one command may take


class Recorder:
    def __init__(self, client: GraphClient) -> None:
        self.lock = threading.Lock()
        self.states: list[tuple[float, np.ndarray]] = []
        self.commands: list[tuple[float, np.ndarray, np.ndarray]] = []
        self.diagnostics: list[dict[str, str]] = []
        node = client.node
        reliable = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)
        node.create_subscription(JointState, "/joint_states", self._on_state, reliable)
        node.create_subscription(JointState, "/controller/command", self._on_command, reliable)
        node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 10)

    def _on_state(self, msg: JointState) -> None:
        assert list(msg.name) == list(JOINT_NAMES)
        with self.lock:
            self.states.append((time_to_sec(msg.header.stamp), np.array(msg.position)))

    def _on_command(self, msg: JointState) -> None:
        with self.lock:
            self.commands.append(
                (time_to_sec(msg.header.stamp), np.array(msg.position), np.array(msg.velocity))
            )

    def _on_diag(self, msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name == "dream_vla/controller":
                values = {kv.key: kv.value for kv in status.values}
                values["_message"] = status.message
                with self.lock:
                    self.diagnostics.append(values)

    def latest_state(self) -> np.ndarray:
        with self.lock:
            return self.states[-1][1].copy()

    def command_count(self) -> int:
        with self.lock:
            return len(self.commands)

    def latest_diag(self) -> dict[str, str]:
        with self.lock:
            return dict(self.diagnostics[-1]) if self.diagnostics else {}


@pytest.fixture
def controller(tmp_path, request):
    can_name = f"vcan-{request.node.name}"[:60]
    proc = NodeProcess(
        "dream_vla_ros.ros.controller_node",
        {
            "arm.backend": "sim",
            "arm.can_name": can_name,
            "auto_enable": True,
            "control_rate_hz": RATE_HZ,
            "diagnostics_period_s": 0.2,
            "sim.initial_positions": START.tolist(),
            # the simulator's feedback comes from a thread of the controller process: on a
            # shared 2-core VM gaps up to ~1 s are host stalls, not CAN faults (as in the
            # sim launch graph); the real-arm default stays 0.1 s
            "arm.feedback_timeout_s": 1.0,
            # likewise a starved simulator thread lags the commands (tracking faults are
            # covered by the control-core tests)
            "sim.max_tracking_error_rad": 0.5,
            **getattr(request, "param", {}),  # a test's own parameters (indirect)
        },
        name=f"controller-{request.node.name}",
    )
    client = GraphClient()
    rec = Recorder(client)
    try:
        wait_for(lambda: len(rec.states) > 10 or not proc.alive(), 30.0, "first /joint_states")
        assert proc.alive(), proc.output()
        wait_for(lambda: rec.latest_diag().get("mode") == "running", 10.0, "controller running")
        yield client, rec, proc
    finally:
        client.close()
        code = proc.stop()
        print(proc.output()[-3000:])
        assert code in (0, -2), f"controller exited with {code}"


def publish_profile(
    client: GraphClient, profile, duration: float, horizon: int = 20, dt: float = 0.05
):
    """Publish chunks of `profile(t)` at 10 Hz for `duration` s; return the last chunk's stamp."""
    pub = client.publisher(JointTrajectory, "/dream_vla/action_chunk")
    t_end = time.monotonic() + duration
    while time.monotonic() < t_end:
        now = client.now()
        positions = np.array([profile(now + (k + 1) * dt) for k in range(horizon)])
        pub.publish(chunk_message(now, JOINT_NAMES, positions, dt))
        last_stamp = now
        time.sleep(0.1)
    return last_stamp


def check_limits(commands: list[tuple[float, np.ndarray, np.ndarray]]) -> dict[str, float]:
    """Assert every command respects position, velocity and acceleration limits.

    A late tick covers the time that really passed (at most MAX_GAP), so the
    limits are checked over each pair's real stamp difference. Across a command
    message this subscriber missed, the speed and acceleration bounds still hold
    over the combined gap, but velocity == dq/dt only holds for adjacent ticks:
    that identity must hold for nearly every pair."""
    assert commands, "no command was sent"
    stamps = np.array([c[0] for c in commands])
    q = np.array([c[1] for c in commands])  # (N, 7)
    v = np.array([c[2] for c in commands])  # (N, 7)
    assert np.all(np.isfinite(q)) and np.all(np.isfinite(v))
    assert np.all(q >= CFG.soft_lower - EPS), "a command went below a soft limit"
    assert np.all(q <= CFG.soft_upper + EPS), "a command went above a soft limit"
    assert np.all(np.abs(v) <= CFG.vmax + EPS), "a command exceeded the velocity limit"
    gaps = np.diff(stamps)
    assert np.all(gaps > 0), "command stamps are not increasing"
    dq = np.diff(q, axis=0)
    dv = np.abs(np.diff(v, axis=0))
    steps = np.minimum(gaps, MAX_GAP)[:, None]
    assert np.all(np.abs(dq) <= CFG.vmax * gaps[:, None] + 1e-5), "a step exceeded vmax"
    over = dv - CFG.amax * gaps[:, None]
    k = int(np.argmax(over.max(axis=1)))
    # 1e-5: stamps are float seconds since 1970, good to ~0.5 us
    assert over[k].max() <= 1e-5, (
        f"a command exceeded the acceleration limit: |dv| {dv[k].round(4)} over "
        f"{gaps[k] * 1e3:.2f} ms (pair {k} of {len(gaps)}, "
        f"v {v[k].round(3)} -> {v[k + 1].round(3)})"
    )
    adjacent = np.all(np.abs(dq - v[1:] * steps) < 1e-5, axis=1)
    assert adjacent.mean() > 0.95, f"velocity != dq/dt for {1 - adjacent.mean():.1%} of pairs"
    return {
        "pairs_checked": int(adjacent.sum()),
        "max_dv_ratio": float(np.max(dv[adjacent] / (CFG.amax * steps[adjacent]))),
        "mean_tick_ms": float(np.median(gaps) * 1e3),
    }


def test_chunks_from_another_process_are_followed(controller):
    client, rec, _ = controller
    client.publisher(JointTrajectory, "/dream_vla/action_chunk")  # matched before t0
    t0 = client.now() + 0.05
    amp = np.array([0.3, 0.2, -0.2, 0.3, 0.2, 0.4, 0.02])

    def profile(t: float) -> np.ndarray:
        phase = max(0.0, t - t0)
        return START + amp * (1 - math.cos(2 * math.pi * 0.5 * phase)) / 2

    publish_profile(client, profile, duration=3.0)
    with rec.lock:
        states = [(t, q) for t, q in rec.states if t0 + 0.3 < t < t0 + 3.0]
        commands = list(rec.commands)
    # 200 Hz gives 540 samples. A shared VM delivers fewer (sleep overshoots of 10+ ms
    # are common there); the tick rate is a benchmark figure (bench/control_loop.py),
    # here it only has to leave enough samples to judge the tracking.
    assert len(states) > MIN_SAMPLES, f"only {len(states)} joint states in 2.7 s"
    # Errors against the target of the same instant, and allowing the reading to
    # be up to 150 ms old. The command is computed from the clock, so it stays on the
    # target when ticks come late (they cover up to 50 ms that passed; an unloaded
    # machine keeps it within 0.01 rad, longer stalls make it catch up). The measured
    # arm is the simulator on threads of the controller process: on an unloaded
    # machine it stays within 0.01 rad, on a starved shared VM (60% CPU steal
    # measured) its feedback is stale by up to ~0.8 s at times, so its bounds are
    # wide; a controller that does not follow the chunk is off by up to 0.4 rad.
    lags = np.arange(0.0, 0.151, 0.005)

    def aligned(samples):
        return np.array([np.abs(q - profile(t)) for t, q in samples])  # (N, 7)

    def lagged(samples):
        return np.array([[np.abs(q - profile(t - d)) for d in lags] for t, q in samples])

    sent = [(t, q) for t, q, _ in commands if t0 + 0.3 < t < t0 + 3.0]
    assert len(sent) > MIN_SAMPLES, f"only {len(sent)} commands in 2.7 s"
    # A controller that does not follow (or lags by 300 ms) is off by 0.1-0.4 rad on
    # most samples: the medians catch it. The tails only bound what host stalls
    # (the test process publishing late, the controller's ticks coming late) do.
    for what, samples, p50_bound, p90_bound, lag_bound in (
        ("command", sent, 0.03, 0.15, 0.15),
        ("measured", states, 0.06, 0.2, 0.25),
    ):
        now_err = aligned(samples)[:, :6].max(axis=1)
        lag_err = lagged(samples)  # (N, lags, 7)
        joint_p50, joint_p90 = np.percentile(now_err, [50, 90])
        joint_lag = np.percentile(lag_err[:, :, :6].max(axis=2).min(axis=1), 95)
        grip_lag = np.percentile(lag_err[:, :, 6].min(axis=1), 95)
        assert within(joint_p50, p50_bound, f"{what} joint error p50 (rad)"), joint_p50
        assert within(joint_p90, p90_bound, f"{what} joint error p90 (rad)"), joint_p90
        assert within(joint_lag, lag_bound, f"{what} joint error p95, 150 ms lag (rad)"), joint_lag
        assert within(grip_lag, 0.003, f"{what} gripper error p95, 150 ms lag (m)"), grip_lag
    moved = np.abs(states[-1][1] - START)
    assert moved[:6].max() > 0.1, "the arm did not move"
    check_limits(commands)


def test_adversarial_chunks_never_break_limits(controller):
    client, rec, proc = controller
    rng = np.random.default_rng(7)
    pub = client.publisher(JointTrajectory, "/dream_vla/action_chunk", 100)
    names = list(JOINT_NAMES)
    kinds = [
        "valid",
        "nan",
        "inf",
        "out_of_range",
        "unknown_name",
        "missing_name",
        "wrong_size",
        "stale",
        "future",
        "empty",
        "jump",
        "jumbled",
        "zero_stamp",
        "bad_timing",
    ]
    sent = {k: 0 for k in kinds}
    n_messages = 3000
    for i in range(n_messages):
        kind = kinds[i % len(kinds)] if i % 3 else "valid"
        now = client.now()
        base = rec.latest_state()
        h = int(rng.integers(1, 40))
        dt = float(rng.uniform(0.01, 0.1))
        pts = base + rng.normal(0, 0.1, size=(h, 7)) * np.r_[np.ones(6), 0.05]
        pts = np.clip(pts, CFG.lower, CFG.upper)
        stamp = now
        msg_names = names
        if kind == "nan":
            pts[rng.integers(h), rng.integers(7)] = math.nan
        elif kind == "inf":
            pts[rng.integers(h), rng.integers(7)] = -math.inf
        elif kind == "out_of_range":
            j = int(rng.integers(6))
            pts[:, j] = CFG.upper[j] + 0.5
        elif kind == "unknown_name":
            msg_names = [*names[:-1], "elbow"]
        elif kind == "missing_name":
            msg_names = names[:-1]
            pts = pts[:, :-1]
        elif kind == "stale":
            stamp = now - 5.0
        elif kind == "future":
            stamp = now + 2.0
        elif kind == "jump":
            pts = np.clip(base + np.r_[np.full(6, 1.2), 0.0], CFG.lower, CFG.upper)[None].repeat(
                h, 0
            )
        elif kind == "jumbled":
            order = rng.permutation(7)
            msg_names = [names[j] for j in order]
            pts = pts[:, order]
        elif kind == "zero_stamp":
            stamp = 0.0
        msg = chunk_message(max(stamp, 0.0), msg_names, pts, dt)
        if kind == "empty":
            msg.points = []
        elif kind == "wrong_size":
            msg.points[0].positions = msg.points[0].positions[:3]
        elif kind == "bad_timing":
            msg.points[-1].time_from_start = msg.points[0].time_from_start
            if h == 1:
                msg.points[0].time_from_start.sec, msg.points[0].time_from_start.nanosec = 0, 0
        pub.publish(msg)
        sent[kind] += 1
        # bursts of ~1 kHz between short pauses
        time.sleep(0.001 if i % 200 else 0.05)
    time.sleep(1.0)
    assert proc.alive(), proc.output()
    diag = rec.latest_diag()
    accepted = int(diag["chunks_accepted"])
    rejected = {k[len("rejected.") :]: int(v) for k, v in diag.items() if k.startswith("rejected.")}
    print("sent", sent, "accepted", accepted, "rejected", rejected)
    for reason in (
        "non_finite",
        "out_of_range",
        "unknown_joint",
        "missing_joint",
        "size_mismatch",
        "stale",
        "future",
        "empty",
        "jump",
        "bad_stamp",
        "bad_timing",
    ):
        assert rejected.get(reason, 0) > 0, f"no chunk was rejected as {reason}"
    # Bursts overflow the subscription queue (depth 10) by design: the newest chunk
    # wins. Enough valid chunks must still get through.
    assert accepted >= 100, f"only {accepted} chunks accepted"
    assert diag["mode"] == "running", (diag, proc.output()[-2000:])
    with rec.lock:
        commands = list(rec.commands)
    stats = check_limits(commands)
    print("limit check", stats, "commands", len(commands))
    # consecutive 5 ms command pairs: ~1000 at 200 Hz, far fewer on a busy shared host
    assert stats["pairs_checked"] > MIN_SAMPLES


def test_publisher_stop_decelerates_and_holds(controller):
    client, rec, _ = controller
    t0 = client.now()
    speed = np.array([0.5, 0.3, -0.3, 0.5, 0.3, 0.5, 0.0])  # rad/s, within the limits

    def ramp(t: float) -> np.ndarray:
        return START + speed * max(0.0, t - t0)

    t_last_chunk = publish_profile(client, ramp, duration=1.0)
    time.sleep(CFG.chunk_timeout_s + 1.5)
    with rec.lock:
        after = [(t, q, v) for t, q, v in rec.commands if t > t_last_chunk]
        states = [(t, q) for t, q in rec.states if t > t_last_chunk + CFG.chunk_timeout_s + 1.0]
    assert after, "no commands after the last chunk"
    check_limits(after)
    # the last chunk reaches 1 s ahead, so the arm still moves when the watchdog fires
    watchdog = [v for t, _, v in after if t > t_last_chunk + CFG.chunk_timeout_s + PERIOD]
    speeds = np.array([np.abs(v[:6]).max() for v in watchdog])
    assert speeds[0] > 0.2, "the arm was not moving when the watchdog fired"
    assert speeds[-1] == 0.0, "the arm did not come to rest"
    # from then on the speed only falls (by at most amax*T per tick: check_limits)
    assert np.all(np.diff(speeds) <= 1e-9), "the arm sped up after the watchdog fired"
    final = after[-1][1]
    held = [q for t, q, _ in after if t > t_last_chunk + CFG.chunk_timeout_s + 1.0]
    assert held and np.allclose(np.array(held), final, atol=1e-9), "commands did not hold"
    # (a starved feedback reader delivers some stale readings first: judge the later half)
    measured = np.array([q for _, q in states])[len(states) // 2 :]
    assert np.abs(measured[:, :6] - final[:6]).max() < 0.01, "the arm did not hold still"


def slow_ramp(t0: float):
    """A constant-speed motion from START, well inside the limits."""
    speed = np.r_[0.3, 0.2, -0.2, 0.3, 0.2, 0.3, 0.0]
    return lambda t: START + speed * max(0.0, t - t0)


def test_estop_latches_until_reset(controller):
    client, rec, _ = controller
    ramp = slow_ramp(client.now())

    publish_profile(client, ramp, duration=0.5)
    reply = client.call(Trigger, "/controller/estop")
    assert reply.success
    t_stop = client.now()  # the e-stop latched before the reply was sent
    publish_profile(client, ramp, duration=1.0)  # chunks keep coming: must be ignored
    time.sleep(0.5)  # let late messages arrive
    with rec.lock:
        late = [t for t, _, _ in rec.commands if t > t_stop]
        after = np.array([q for t, q in rec.states if t > t_stop + 0.3])
    assert not late, f"{len(late)} commands were sent during e-stop"
    assert len(after) > 5, "no joint states during e-stop"
    spread = np.ptp(after[:, :6], axis=0).max()
    assert spread < 0.005, f"the arm moved {spread:.4f} rad during e-stop"
    wait_for(lambda: rec.latest_diag().get("mode") == "estop", 2.0, "estop in diagnostics")
    assert int(rec.latest_diag().get("rejected.not_running", 0)) > 0
    reply = client.call(Trigger, "/controller/enable")
    assert not reply.success and "reset_fault" in reply.message
    reply = client.call(Trigger, "/controller/reset_fault")
    assert reply.success, reply.message
    reply = client.call(Trigger, "/controller/enable")
    assert reply.success, reply.message
    n_before = rec.command_count()
    wait_for(lambda: rec.command_count() > n_before + 20, 5.0, "commands after reset and enable")


@pytest.mark.parametrize(
    "controller", [{"sim.gripper_contact_topic": "/test/gripper_contact"}], indirect=True
)
def test_the_simulated_gripper_stalls_on_the_reported_object_and_reports_its_effort(controller):
    """In the world graphs the physics reports the object between the fingers; the
    controller's simulator stalls its gripper there, /joint_states carries the
    effort, and the controller keeps running. A bad report is refused in words."""
    from std_msgs.msg import Float64

    client, rec, proc = controller
    efforts: list[tuple[float, float]] = []
    arm_efforts: list[float] = []

    def on_state(m: JointState) -> None:
        efforts.append((m.position[6], m.effort[6]))
        arm_efforts.extend(m.effort[:6])

    client.node.create_subscription(
        JointState,
        "/joint_states",
        on_state,
        QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE),
    )
    contact = client.publisher(Float64, "/test/gripper_contact")
    start = rec.latest_state()
    opened = start.copy()
    opened[6] = 0.06
    publish_profile(client, lambda t: opened, duration=1.0)
    wait_for(lambda: rec.latest_state()[6] > 0.059, 3.0, "the gripper to open")
    closed = start.copy()
    closed[6] = 0.0
    deadline = time.monotonic() + 3.0
    pub = client.publisher(JointTrajectory, "/dream_vla/action_chunk")
    while time.monotonic() < deadline and not (efforts and efforts[-1][1] > 0.5):
        contact.publish(Float64(data=0.03))  # a 3 cm opening blocks the fingers
        now = client.now()
        pub.publish(chunk_message(now, JOINT_NAMES, np.tile(closed, (10, 1)), 0.05))
        time.sleep(0.05)
    assert efforts and efforts[-1][1] == pytest.approx(1.0)  # arm.gripper_effort_nm
    assert all(math.isnan(e) for e in arm_efforts)  # the arm joints' effort is not read
    assert efforts[-1][0] == pytest.approx(0.03, abs=1e-4)
    assert rec.latest_diag().get("mode") == "running"  # a grasp is not a fault
    contact.publish(Float64(data=float("nan")))
    wait_for(
        lambda: rec.latest_diag().get("refused /test/gripper_contact") == "1",
        3.0,
        "the refusal of a NaN contact report",
    )
    assert "finite opening" in proc.output() and "publish the blocked opening" in proc.output()
    assert proc.alive() and rec.latest_diag().get("mode") == "running"


# a pose with the tool point 6.7 cm above the table; joint2 2.0 -> 2.4 takes it 5.9 cm
# below (test_control.py)
NEAR_TABLE = np.array([0.0, 2.0, -1.2, 0.0, 1.0, 0.0, 0.03])


@pytest.mark.parametrize(
    "controller", [{"sim.initial_positions": NEAR_TABLE.tolist()}], indirect=True
)
def test_a_descent_into_the_table_stops_on_the_workspace_floor(controller):
    """Chunks that drive the tool point 6 cm into the table, sent from another
    process: the node lifts their targets onto the floor of config/piper.yaml, the
    arm stops there within the motion limits, and /diagnostics counts the lifts."""
    client, rec, _ = controller
    ws = CFG.workspace
    start = rec.latest_state()
    t0 = client.now() + 0.05

    def descent(t: float) -> np.ndarray:
        share = min(max(0.0, t - t0) / 1.5, 1.0)
        return start + np.r_[0.0, 0.4 * share, 0, 0, 0, 0, 0]

    assert ws.tool_height(descent(t0 + 2.0)) < -0.05
    publish_profile(client, descent, duration=2.5)
    wait_for(lambda: int(rec.latest_diag().get("floor_lifted_points", 0)) > 0, 2.0, "lifts")
    with rec.lock:
        commands = [c for c in rec.commands if c[0] > t0]
        measured = [q for t, q in rec.states if t > t0]
    heights = np.array([ws.tool_height(q) for _, q, _ in commands])
    assert heights.min() > ws.floor_z_m - 2e-3, heights.min()
    assert heights[-1] == pytest.approx(ws.floor_z_m, abs=1e-3)  # it went down to it
    assert min(ws.tool_height(q) for q in measured) > ws.floor_z_m - 5e-3
    assert rec.latest_diag().get("mode") == "running"
    check_limits(commands)


def test_can_feedback_loss_faults_and_stops(controller):
    client, rec, _ = controller
    ramp = slow_ramp(client.now())

    publish_profile(client, ramp, duration=0.5)
    request = SetBool.Request(data=False)
    assert client.call(SetBool, "/controller/sim/set_feedback", request).success
    wait_for(lambda: rec.latest_diag().get("mode") == "fault", 2.0, "fault after CAN loss")
    diag = rec.latest_diag()
    # whichever detects the loss first: our feedback timeout or piper_sdk's link monitor
    message = diag["_message"]
    assert "no joint feedback" in message or "CAN link" in message, message
    n_fault = rec.command_count()
    time.sleep(0.5)
    assert rec.command_count() == n_fault, "commands were sent after the CAN fault"
    reply = client.call(Trigger, "/controller/reset_fault")
    assert not reply.success, "reset must fail while the CAN link is down"
    assert client.call(SetBool, "/controller/sim/set_feedback", SetBool.Request(data=True)).success
    # piper_sdk's own link monitor needs a moment of fresh frames before isOk() is true again
    deadline = time.monotonic() + 5.0
    reply = client.call(Trigger, "/controller/reset_fault")
    while not reply.success and time.monotonic() < deadline:
        time.sleep(0.2)
        reply = client.call(Trigger, "/controller/reset_fault")
    assert reply.success, reply.message
    assert client.call(Trigger, "/controller/enable").success


_SHUTDOWN_RACE = """
import rclpy
from rclpy._rclpy_pybind11 import RCLError
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from dream_vla_ros.ros.node_main import run_node

class RacyExecutor(SingleThreadedExecutor):
    def spin_once(self, timeout_sec=None):
        if SHUT_DOWN:  # what SIGINT's handler does before the wait set is built
            rclpy.shutdown()
        raise RCLError("failed to initialize wait set: the given context is not valid")

class Probe(Node):
    def shutdown(self):
        print("node shut down", flush=True)

run_node("probe", lambda: Probe("probe"), RacyExecutor)
"""


_TAKE_FAILURE = """
import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from dream_vla_ros.ros.node_main import run_node

class FailingTake(SingleThreadedExecutor):
    calls = 0

    def spin_once(self, timeout_sec=None):
        FailingTake.calls += 1
        if FailingTake.calls > 1 or SHUT_DOWN:
            rclpy.shutdown()  # what SIGINT's handler does
        if FailingTake.calls > 2:
            raise ExternalShutdownException()
        # what rclpy's take_message raises when the context goes away under it
        raise RuntimeError("Unable to convert call argument '0' to Python object")

class Probe(Node):
    def shutdown(self):
        print("node shut down", flush=True)

run_node("probe", lambda: Probe("probe"), FailingTake)
"""


@pytest.mark.parametrize("shut_down", [True, False])
def test_a_message_take_that_fails_is_reported_or_is_the_shutdown(shut_down):
    """rclpy's take_message fails with "Unable to convert call argument '0'" when
    SIGINT shuts the context down while the executor takes a message (seen at the
    end of a launcher test): that is a clean exit. With the context alive the
    failure is reported and the node spins on."""
    import subprocess
    import sys

    code = f"SHUT_DOWN = {shut_down}\n" + _TAKE_FAILURE
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "node shut down" in proc.stdout and "Traceback" not in proc.stderr, proc.stderr
    reported = "callback failed, going on: RuntimeError" in proc.stdout + proc.stderr
    assert reported == (not shut_down), proc.stdout + proc.stderr


@pytest.mark.parametrize("shut_down", [True, False])
def test_a_sigint_that_invalidates_the_context_mid_spin_is_a_clean_exit(shut_down):
    """The executor can see the context SIGINT shut down as an RCLError ("context is
    not valid") instead of ExternalShutdownException: the node must still exit 0
    (the tests' nodes exited 1 now and then). With the context alive it is a real
    error and propagates."""
    import subprocess
    import sys

    code = f"SHUT_DOWN = {shut_down}\n" + _SHUTDOWN_RACE
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "node shut down" in proc.stdout  # the node's own shutdown ran either way
    if shut_down:
        assert proc.returncode == 0, proc.stderr
    else:
        assert proc.returncode != 0 and "context is not valid" in proc.stderr


def test_lost_can_feedback_on_the_real_arm_configuration_stops_commands_within_150_ms():
    """With the real arm's feedback timeout (0.1 s, the default) and the default
    diagnostics period (1 s): silencing the simulated CAN feedback stops the commands
    within 150 ms of the last feedback frame, and the fault reaches /diagnostics when
    it happens, not at the next periodic report."""
    client = GraphClient("real_timeout_test")
    rec = Recorder(client)
    proc = NodeProcess(
        "dream_vla_ros.ros.controller_node",
        {"arm.backend": "sim", "arm.can_name": "vcan-real-timeout", "auto_enable": True},
        name="controller-real-timeout",
    )
    try:
        for _ in range(5):  # a host stall may trip the 0.1 s timeout before the cut
            wait_for(lambda: rec.latest_diag().get("mode") in ("running", "fault"), 30, "mode")
            if rec.latest_diag().get("mode") == "running":
                time.sleep(0.5)
                if rec.latest_diag().get("mode") == "running":
                    break
            client.call(Trigger, "/controller/reset_fault")
            client.call(Trigger, "/controller/enable")
            time.sleep(1.0)
        assert rec.latest_diag().get("mode") == "running", rec.latest_diag()
        with rec.lock:
            seen = len(rec.diagnostics)
        assert client.call(SetBool, "/controller/sim/set_feedback", SetBool.Request(data=False))
        wait_for(lambda: rec.latest_diag().get("mode") == "fault", 2.0, "fault after CAN loss")
        arrived = time.time()
        with rec.lock:
            fault = next(d for d in rec.diagnostics[seen:] if d.get("mode") == "fault")
        last_frame = float(fault["sim.last_feedback_s"])
        time.sleep(0.5)
        with rec.lock:
            last_command = rec.commands[-1][0]
        print(
            f"last command {1e3 * (last_command - last_frame):.0f} ms and the fault on "
            f"/diagnostics {1e3 * (arrived - last_frame):.0f} ms after the last frame"
        )
        assert within(last_command - last_frame, 0.150, "last command after the last frame (s)")
        # at once, not at the next 1 s report
        assert within(arrived - last_frame, 0.5, "fault on /diagnostics after the last frame (s)")
    finally:
        client.close()
        assert proc.stop() in (0, -2), proc.output()
