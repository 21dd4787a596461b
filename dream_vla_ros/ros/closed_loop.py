"""Closed-loop work in the MuJoCo world through the real ROS graph (docs/sim.md):

- `collect`: the `collect_world` graph (simulated controller, sim_world, the
  touch expert behind the teleop node, the recorder); per episode: new layout,
  record the expert's move, flag success from the measured joints, return home.
- `evaluate`: controller + sim_world + policy (a checkpoint); per seed: the
  policy idles while this driver brings the arm home with a chunk, then the
  layout and instruction change, the policy is enabled, and the measured
  joints decide success. Writes results.json, trajectories.png and rollout.gif.

The driver is a node in this process (on the graph's DDS domain); every node of
the graph is its own process started by the launcher.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dream_vla_ros.control import JOINT_NAMES
from dream_vla_ros.control.config import load_safety_config
from dream_vla_ros.launch_graph import COLLECT_WORLD, SIM_WORLD, parse_arguments
from dream_vla_ros.launcher import Launcher
from dream_vla_ros.ros.client import BackgroundNode
from dream_vla_ros.sim.task import (
    APPROACH_S,
    COLOURS,
    DESCEND_S,
    HOME,
    Layout,
    SuccessMonitor,
    fingertip,
    sample_layout,
    start_pose,
)

HOME_TOLERANCE_RAD = 0.03


class ClosedLoopError(RuntimeError):
    """The graph did not do what the driver needs; the message says what and where."""


class GraphClient(BackgroundNode):
    """The driver's node: measured joints, diagnostics, parameters, services."""

    def __init__(self, name: str) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import Image, JointState

        super().__init__(name)
        self.lock = threading.Lock()
        self.q: np.ndarray | None = None
        self.on_state: Callable[[float, np.ndarray], None] | None = None
        self.frames: list[np.ndarray] | None = None  # front images, when recording a GIF
        self.diag: dict[str, dict[str, str]] = {}  # status name -> values (+ "message")
        self.diag_count: dict[str, int] = {}  # status name -> reports received
        self.node.create_subscription(JointState, "/joint_states", self._state, 50)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._diag, 20)
        self.node.create_subscription(
            Image, "/camera/front/image_raw", self._image, qos_profile_sensor_data
        )
        self._pubs: dict[tuple[type, str], Any] = {}

    def _state(self, msg) -> None:
        index = {n: i for i, n in enumerate(msg.name)}
        if not all(n in index for n in JOINT_NAMES):
            return
        q = np.array([msg.position[index[n]] for n in JOINT_NAMES])
        with self.lock:
            self.q = q
            hook = self.on_state
        if hook is not None:
            hook(self.now(), q)

    def _diag(self, msg) -> None:
        with self.lock:
            for s in msg.status:
                self.diag[s.name] = {"message": s.message, **{kv.key: kv.value for kv in s.values}}
                self.diag_count[s.name] = self.diag_count.get(s.name, 0) + 1

    def status(self, name: str) -> dict[str, str]:
        with self.lock:
            return dict(self.diag.get(name, {}))

    def controller_mode(self) -> str:
        return self.status("dream_vla/controller").get("mode", "running")

    def recover_controller(self, log: Callable[[str], None], attempts: int = 5) -> bool:
        """Reset a faulted controller (a starved host can trip its tracking or
        feedback timeouts) and enable it again; True when it had to. A reset the arm
        refuses (it still reports the fault), or a controller that faults again before
        it reports running, is retried for a few attempts."""
        mode = self.controller_mode()
        if mode == "running":
            return False
        from std_srvs.srv import Trigger

        name = "dream_vla/controller"
        log(f"controller in {mode} ({self.status(name).get('message')}): reset")
        for attempt in range(attempts):
            last = attempt == attempts - 1
            reply = self.call(Trigger, "/controller/reset_fault")
            if reply.success or "no fault" in reply.message:  # or it was only disabled
                reply = self.call(Trigger, "/controller/enable")
            if not reply.success:
                if last:
                    raise ClosedLoopError(f"the controller did not recover: {reply.message}")
                log(f"controller refused to recover ({reply.message}); retrying")
                time.sleep(1.0)
                continue
            # Judge by reports published after the enable: the second one to arrive
            # from now on was certainly sent after the reply (one may be in flight).
            with self.lock:
                seen = self.diag_count.get(name, 0)
            self.wait(
                lambda seen=seen: self.diag_count.get(name, 0) >= seen + 2,
                15,
                "two /diagnostics reports from the controller after its enable",
            )
            if self.controller_mode() == "running":
                return True
            status = self.status(name)
            if last:
                raise ClosedLoopError(
                    f"the controller faulted again after {attempts} resets: "
                    f"{status.get('mode')} ({status.get('message')})"
                )
            log(f"controller in {status.get('mode')} again ({status.get('message')}); retrying")
        raise ClosedLoopError(f"no reset attempted (attempts={attempts})")

    def _image(self, msg) -> None:
        with self.lock:
            if self.frames is not None and len(self.frames) < 400:
                image = np.frombuffer(bytes(msg.data), np.uint8)
                self.frames.append(image.reshape(msg.height, msg.width, 3).copy())

    def measured(self) -> np.ndarray | None:
        with self.lock:
            return None if self.q is None else self.q.copy()

    def wait(
        self, predicate: Callable[[], bool], timeout_s: float, what: str | Callable[[], str]
    ) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            if time.monotonic() > deadline:
                text = what() if callable(what) else what
                raise ClosedLoopError(f"timed out after {timeout_s:.0f} s waiting for {text}")
            time.sleep(0.02)

    def where(self) -> str:
        q = self.measured()
        mode = self.status("dream_vla/controller").get("mode", "?")
        where = None if q is None else np.round(q, 3).tolist()
        return f"the arm to return home (at {where}, controller {mode})"

    def faulted(self) -> bool:
        return self.controller_mode() in ("fault", "estop")

    def at_home(self) -> bool:
        return self.at(HOME)

    def at(self, pose: np.ndarray) -> bool:
        q = self.measured()
        return q is not None and float(np.abs(q[:6] - pose[:6]).max()) < HOME_TOLERANCE_RAD

    def call(self, srv_type, name: str, request=None, timeout: float = 20.0):
        try:
            return super().call(srv_type, name, request, timeout)
        except TimeoutError as exc:
            raise ClosedLoopError(str(exc)) from exc

    def set_param(self, node: str, name: str, value: bool | int | str) -> None:
        from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
        from rcl_interfaces.srv import SetParameters

        if isinstance(value, bool):
            pv = ParameterValue(type=ParameterType.PARAMETER_BOOL, bool_value=value)
        elif isinstance(value, int):
            pv = ParameterValue(type=ParameterType.PARAMETER_INTEGER, integer_value=value)
        else:
            pv = ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=value)
        request = SetParameters.Request(parameters=[Parameter(name=name, value=pv)])
        reply = self.call(SetParameters, f"/{node}/set_parameters", request)
        if not reply.results[0].successful:
            raise ClosedLoopError(f"{node}: {name} := {value!r} refused: {reply.results[0].reason}")

    def trigger(self, service: str) -> str:
        from std_srvs.srv import Trigger

        reply = self.call(Trigger, service)
        if not reply.success:
            raise ClosedLoopError(f"{service}: {reply.message}")
        return reply.message

    def publish(self, msg_type, topic: str, msg) -> None:
        key = (msg_type, topic)
        if key not in self._pubs:
            pub = self.node.create_publisher(msg_type, topic, 10)
            self.wait(lambda: pub.get_subscription_count() > 0, 20, f"a subscriber of {topic}")
            self._pubs[key] = pub
        self._pubs[key].publish(msg)


def _go_home(
    client: GraphClient, peak_speed: float = 0.8, dt: float = 0.05, tries: int = 3
) -> None:
    """Bring the arm home along one minimum-jerk path (peak joint speed `peak_speed`
    rad/s), streamed as chunks every 0.2 s: the controller holds when no chunk has
    arrived for its chunk timeout (0.5 s), whatever the last one's horizon. A host
    stall longer than that leaves the arm held short of home (seen: 0.15 rad on
    joint1), so an arm not home 3 s after its path gets a new path from where it is
    (`tries` paths in all)."""
    for attempt in range(tries):
        _stream_path_home(client, peak_speed, dt)
        last = attempt == tries - 1
        try:
            client.wait(
                lambda: client.at_home() or client.faulted(), 30 if last else 3, client.where
            )
            return
        except ClosedLoopError:
            if last:
                raise


def _stream_path_home(client: GraphClient, peak_speed: float, dt: float) -> None:
    from trajectory_msgs.msg import JointTrajectory

    from dream_vla_ros.robot.teleop import minimum_jerk
    from dream_vla_ros.ros.conversions import chunk_message

    q = client.measured()
    if q is None:
        raise ClosedLoopError("no /joint_states from the controller")
    distance = float(np.abs(HOME[:6] - q[:6]).max())
    seconds = max(1.0, 1.875 * distance / peak_speed)  # min-jerk peak speed 1.875 d / T
    start = time.monotonic()
    while True:
        elapsed = time.monotonic() - start
        # at least one point (home): after a late wake-up past the path's end the
        # chunk would otherwise be empty, and the controller refuses an empty chunk
        n = max(1, int((seconds - elapsed) / dt) + 1)
        times = elapsed + np.arange(1, n + 1) * dt
        s = minimum_jerk(np.clip(times / seconds, 0.0, 1.0))[:, None]
        msg = chunk_message(client.now(), JOINT_NAMES, q + s * (HOME - q), dt)
        client.publish(JointTrajectory, "/dream_vla/action_chunk", msg)
        if elapsed >= seconds:
            break
        time.sleep(0.2)


def _home(
    client: GraphClient,
    log: Callable[[str], None],
    move: Callable[[], None] | None = None,
    attempts: int = 3,
    before_reset: Callable[[], None] | None = None,
) -> int:
    """Bring the arm home with `move` (default: stream the path from here, _go_home);
    a controller fault on the way (a host stall, see docs/controller.md) is reset and
    the move restarted. `before_reset` runs before a reset: it must stop whatever
    streams chunks (a re-enabled controller would follow a stale stream at once).
    Returns how many resets it took."""
    resets = 0
    for _ in range(attempts):
        if before_reset is not None and client.controller_mode() != "running":
            before_reset()
        resets += client.recover_controller(log)
        (move or (lambda: _go_home(client)))()
        if client.at_home() and not client.faulted():
            return resets
    raise ClosedLoopError(f"gave up after {attempts} attempts waiting for {client.where()}")


def _start_recording(client: GraphClient, timeout_s: float = 60.0) -> None:
    """/recorder/start, retried while the recorder has not yet discovered a publisher
    on each of its topics (the cameras come up last); any other refusal is an error."""
    from std_srvs.srv import Trigger

    deadline = time.monotonic() + timeout_s
    while True:
        reply = client.call(Trigger, "/recorder/start")
        if reply.success:
            return
        if "no publisher seen" not in reply.message or time.monotonic() > deadline:
            raise ClosedLoopError(f"/recorder/start: {reply.message}")
        time.sleep(0.5)


@dataclass
class Rollout:
    seed: int
    instruction: str
    success: bool
    touched: str
    distance_m: float
    seconds: float
    tip_path: list[list[float]] = field(default_factory=list)
    controller_fault: bool = False  # the controller faulted during the rollout


def _track(client: GraphClient, layout: Layout) -> tuple[SuccessMonitor, list]:
    from dream_vla_ros.control.kinematics import DHChain

    chain = DHChain.load()
    monitor = SuccessMonitor(layout, chain)
    path: list[list[float]] = []

    def hook(_t: float, q: np.ndarray) -> None:
        monitor.update(q)
        if len(path) < 5000:
            path.append(fingertip(chain, q)[0].tolist())

    client.on_state = hook
    return monitor, path


def _launch(graph, argv: list[str], log_path: Path) -> tuple[Launcher, Any]:
    values = parse_arguments(graph, argv)
    log = log_path.open("w")
    launcher = Launcher(graph, values, out=log, grace_s=5.0)
    os.environ.update(launcher.env)  # this process joins the graph's DDS domain
    launcher.start()
    return launcher, log


def collect(
    out_dir: str | Path,
    episodes: int,
    seed0: int = 1000,
    camera: tuple[int, int] = (320, 240),
    log: Callable[[str], None] = print,
    per_layout: int = 1,
    during_episode: Callable[[GraphClient, int], None] | None = None,
    random_starts: int = 0,
) -> dict[str, Any]:
    """Record `episodes` expert episodes: layout seeds seed0, seed0 + 1, ..., each
    demonstrated `per_layout` times (1-3) from home with a different named cube,
    starting with the seed's own (the same images with different instructions and
    actions: the colour word is what decides), then `random_starts` more times from
    a random pose over the table (`sim.task.start_pose`; the named cube cycles on),
    which shows the way to the cube from where a policy's errors take the arm.
    `during_episode(client, i)` runs once the expert has started episode i (the
    tests use it to make the controller fault)."""
    if not 1 <= per_layout <= len(COLOURS):
        raise ValueError(f"per_layout must be 1 to {len(COLOURS)}, got {per_layout}")
    if not 0 <= random_starts <= 2 * len(COLOURS):
        raise ValueError(f"random_starts must be 0 to {2 * len(COLOURS)}, got {random_starts}")
    cycle = per_layout + random_starts
    limits = load_safety_config(None)  # the teleop node's (its limits_file is not set)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    argv = [f"output_dir:={out}", f"camera_width:={camera[0]}", f"camera_height:={camera[1]}"]
    launcher, graph_log = _launch(COLLECT_WORLD, argv, out / "graph.log")
    client = GraphClient("closed_loop_collect")
    results = []
    faults = 0

    def expert_home() -> None:
        client.set_param("teleop", "task.start_seed", -1)
        client.set_param("teleop", "task.seed", -1)  # from the measured pose
        client.wait(lambda: client.at_home() or client.faulted(), 30, client.where)

    def expert_to_start(start_seed: int) -> None:
        pose = start_pose(start_seed, limits.soft_lower, limits.soft_upper)
        client.set_param("teleop", "task.start_seed", start_seed)
        client.set_param("teleop", "task.seed", -1)
        client.wait(
            lambda: client.at(pose) or client.faulted(),
            30,
            f"the arm to reach the start pose {np.round(pose, 3).tolist()}",
        )

    def stop_expert() -> None:
        # After a fault the expert still streams its episode (the touch pose); a
        # re-enabled controller would go there first, and the next plan, from a
        # moving arm, would fight it. Plan from the stopped arm before the reset.
        client.set_param("teleop", "task.seed", -1)

    def home() -> int:
        return _home(client, log, expert_home, before_reset=stop_expert)

    try:
        client.wait(lambda: client.measured() is not None, 120, "/joint_states (see graph.log)")
        faults += home()
        for i in range(episodes):
            if launcher.check() != 0:
                raise ClosedLoopError(f"a node died: {launcher.failed} (see {out}/graph.log)")
            seed, j = seed0 + i // cycle, i % cycle
            own = COLOURS.index(sample_layout(seed).target)
            layout = sample_layout(seed, COLOURS[(own + j) % len(COLOURS)])
            client.set_param("sim_world", "task.target", layout.target)
            client.set_param("sim_world", "task.seed", seed)
            client.set_param("teleop", "task.target", layout.target)
            client.set_param("recorder", "instruction", layout.instruction)
            start = "home"
            if j >= per_layout:
                start_seed = seed * 16 + j
                expert_to_start(start_seed)
                start = f"start pose {start_seed}"
            time.sleep(0.3)  # the new layout reaches the cameras
            monitor, _ = _track(client, layout)
            _start_recording(client)
            client.set_param("teleop", "task.seed", seed)
            if during_episode is not None:
                during_episode(client, i)
            # the expert's move and the arm's lag, then a short hold at the touch
            deadline = time.monotonic() + APPROACH_S + DESCEND_S + 1.5
            while not monitor.touched and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(0.6)
            outcome = monitor.outcome
            client.on_state = None
            # an episode the controller stopped is not a demonstration of the task
            fault = client.faulted()
            success = outcome.success and not fault
            client.trigger("/recorder/stop" if success else "/recorder/stop_failed")
            results.append(
                {
                    "seed": seed,
                    "target": layout.target,
                    "start": start,
                    "success": success,
                    "touched": outcome.touched,
                    "controller_fault": fault,
                }
            )
            verdict = "success" if success else f"FAILED ({outcome.touched or 'none'})"
            verdict += " (controller fault)" if fault else ""
            log(
                f"collect: episode {i + 1}/{episodes} seed {seed} from {start}: "
                f"{layout.instruction}: {verdict}"
            )
            faults += home()
    finally:
        client.close()
        launcher.shutdown()
        graph_log.close()
    summary = {
        "episodes": episodes,
        "per_layout": per_layout,
        "random_starts": random_starts,
        "expert_success_rate": float(np.mean([r["success"] for r in results])) if results else 0.0,
        "controller_resets": faults,
        "results": results,
    }
    (out / "collect.json").write_text(json.dumps(summary, indent=2))
    return summary


def evaluate(
    checkpoint: str | Path,
    out_dir: str | Path,
    seeds: list[int],
    timeout_s: float = 8.0,
    camera: tuple[int, int] = (320, 240),
    log: Callable[[str], None] = print,
    during_rollout: Callable[[GraphClient, int], None] | None = None,
) -> dict[str, Any]:
    """Closed-loop success rate of a checkpoint over layout seeds.

    `during_rollout(client, k)` runs once the policy is enabled for rollout k (the
    tests use it to cut the simulated CAN feedback and check the recovery)."""
    from std_msgs.msg import String

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    argv = [
        f"checkpoint:={Path(checkpoint).resolve()}",
        f"camera_width:={camera[0]}",
        f"camera_height:={camera[1]}",
        "policy_enabled:=false",
    ]
    launcher, graph_log = _launch(SIM_WORLD, argv, out / "graph.log")
    client = GraphClient("closed_loop_eval")
    rollouts: list[Rollout] = []
    gif_frames: list[np.ndarray] = []
    faults = 0
    try:
        client.wait(lambda: client.measured() is not None, 120, "/joint_states")
        client.wait(
            lambda: client.status("dream_vla/policy").get("ready") == "True",
            180,
            "the policy to warm up (see graph.log)",
        )
        for k, seed in enumerate(seeds):
            if launcher.check() != 0:
                raise ClosedLoopError(f"a node died: {launcher.failed} (see {out}/graph.log)")
            client.set_param("policy", "enabled", False)
            faults += _home(client, log)
            layout = sample_layout(seed)
            client.set_param("sim_world", "task.seed", seed)
            msg = String()
            msg.data = layout.instruction
            client.publish(String, "/policy/instruction", msg)
            time.sleep(0.4)  # the new layout and instruction arrive before the policy runs
            monitor, path = _track(client, layout)
            if k == 0:
                with client.lock:
                    client.frames = []
            start = time.monotonic()
            client.set_param("policy", "enabled", True)
            if during_rollout is not None:
                during_rollout(client, k)
            while time.monotonic() - start < timeout_s and not monitor.touched:
                time.sleep(0.05)
            client.set_param("policy", "enabled", False)
            elapsed = time.monotonic() - start
            client.on_state = None
            if k == 0:
                with client.lock:
                    gif_frames, client.frames = client.frames or [], None
            o = monitor.outcome
            fault = client.faulted()  # reported with the rollout (a fault stops the arm)
            rollouts.append(
                Rollout(
                    seed,
                    layout.instruction,
                    o.success,
                    o.touched,
                    o.distance_m,
                    elapsed,
                    path,
                    fault,
                )
            )
            log(
                f"evaluate: seed {seed}: {layout.instruction}: "
                f"{'success' if o.success else 'failure'} (touched {o.touched or 'nothing'}, "
                f"closest {o.distance_m * 100:.1f} cm, {elapsed:.1f} s"
                f"{', controller fault' if fault else ''})"
            )
        diagnostics = {n: client.status(f"dream_vla/{n}") for n in ("policy", "controller")}
    finally:
        client.close()
        launcher.shutdown()
        graph_log.close()
    rate = float(np.mean([r.success for r in rollouts])) if rollouts else 0.0
    summary = {
        "checkpoint": str(checkpoint),
        "seeds": seeds,
        "success_rate": rate,
        "controller_resets": faults,
        "diagnostics": diagnostics,  # the nodes' last /diagnostics values
        "rollouts": [{k: v for k, v in r.__dict__.items() if k != "tip_path"} for r in rollouts],
    }
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    _plot_trajectories(rollouts, out / "trajectories.png")
    if gif_frames:
        from PIL import Image

        images = [Image.fromarray(f) for f in gif_frames[::2]]
        images[0].save(
            out / "rollout.gif", save_all=True, append_images=images[1:], duration=200, loop=0
        )
    return summary


def _plot_trajectories(rollouts: list[Rollout], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(rollouts)
    cols = min(5, max(1, n))
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows), squeeze=False)
    for ax, r in zip(axes.ravel(), rollouts):
        layout = sample_layout(r.seed)
        for colour, centre in layout.cubes.items():
            ax.add_patch(
                plt.Rectangle(
                    (centre[1] - 0.02, centre[0] - 0.02), 0.04, 0.04, color=colour, alpha=0.8
                )
            )
        if r.tip_path:
            tip = np.array(r.tip_path)
            ax.plot(tip[:, 1], tip[:, 0], "k-", lw=1)
        ax.set_xlim(-0.25, 0.25)
        ax.set_ylim(0.1, 0.45)
        ax.set_aspect("equal")
        ax.set_title(f"{r.seed}: {layout.target} {'ok' if r.success else 'x'}", fontsize=9)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    fig.suptitle("fingertip paths seen from above (x forward, y left)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
