"""The `dream-vla` command.

dream-vla demo [--seconds S] [arg:=value ...]
    the simulated graph (arm simulator, cameras, policy, controller) for S seconds,
    with a live view and a summary of what the arm did
dream-vla launch GRAPH [arg:=value ...] [--print]
    run a node graph (sim | bringup) without ros2 launch; --print shows the commands
dream-vla launch
    list the graphs and their arguments
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import threading
import time

import numpy as np

from dream_vla_ros.launch_graph import GRAPHS, LaunchError, graph, node_command, parse_arguments
from dream_vla_ros.launcher import Launcher, launch


class _Monitor:
    """What the demo shows: arm state, commands, and both nodes' diagnostics."""

    def __init__(self, node) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from sensor_msgs.msg import JointState
        from trajectory_msgs.msg import JointTrajectory

        self.lock = threading.Lock()
        self.measured: list[np.ndarray] = []
        self.commands: list[tuple[float, np.ndarray, np.ndarray]] = []
        self.chunks = 0
        self.diag: dict[str, dict[str, str]] = {}
        self.messages: dict[str, str] = {}
        node.create_subscription(JointState, "/joint_states", self._on_state, 50)
        node.create_subscription(JointState, "/controller/command", self._on_command, 200)
        node.create_subscription(JointTrajectory, "/dream_vla/action_chunk", self._on_chunk, 10)
        node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 10)

    def _on_state(self, msg) -> None:
        with self.lock:
            self.measured.append(np.array(msg.position))

    def _on_command(self, msg) -> None:
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        with self.lock:
            self.commands.append((stamp, np.array(msg.position), np.array(msg.velocity)))

    def _on_chunk(self, _msg) -> None:
        with self.lock:
            self.chunks += 1

    def _on_diag(self, msg) -> None:
        with self.lock:
            for status in msg.status:
                self.diag[status.name] = {kv.key: kv.value for kv in status.values}
                self.messages[status.name] = status.message

    def get(self, name: str, key: str) -> str:
        with self.lock:
            return self.diag.get("dream_vla/" + name, {}).get(key, "?")


def demo(seconds: float, argv: list[str]) -> int:
    g = graph("sim")
    values = parse_arguments(g, argv)
    launcher = Launcher(g, values)
    os.environ.update(launcher.env)  # this process joins the graph's DDS domain
    import rclpy
    from rclpy.node import Node

    from dream_vla_ros.control import load_safety_config

    cfg = load_safety_config()
    print(f"dream-vla demo: graph 'sim' for {seconds:.0f} s: {launcher.describe()}")
    print(f"  instruction: '{values['instruction']}'")
    if not values["checkpoint"]:
        print(
            f"  model: RANDOM WEIGHTS ({values['preset']} preset, {values['head']} head): the "
            "arm moves inside a small box near home; a trained checkpoint lands with the sim world"
        )
    launcher.start()
    rclpy.init()
    node = Node("dream_vla_demo_monitor")
    mon = _Monitor(node)
    code = 0
    start = time.monotonic()
    end = start + seconds
    next_report = start + 3.0
    try:
        while time.monotonic() < end:
            rclpy.spin_once(node, timeout_sec=0.05)
            code = launcher.check()
            if code:
                break
            if time.monotonic() >= next_report:
                next_report += 3.0
                with mon.lock:
                    q = mon.measured[-1][:6] if mon.measured else None
                joints = (
                    np.array2string(q, precision=2, suppress_small=True) if q is not None else "-"
                )
                print(
                    f"  t={time.monotonic() - start:4.1f}s  "
                    f"policy: ready={mon.get('policy', 'ready')} "
                    f"chunks={mon.get('policy', 'chunks_published')} "
                    f"p50={mon.get('policy', 'inference_p50_ms')} ms  "
                    f"controller: {mon.get('controller', 'mode')} "
                    f"accepted={mon.get('controller', 'chunks_accepted')}  joints={joints}"
                )
    except KeyboardInterrupt:
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
        clean = launcher.shutdown()
    if not code and not clean:
        code = 1
    return _summary(mon, cfg) or code


def _summary(mon: _Monitor, cfg) -> int:
    with mon.lock:
        commands = list(mon.commands)
        measured = list(mon.measured)
    if len(commands) < 2 or not measured:
        print("no commands were executed", file=sys.stderr)
        return 1
    stamps = np.array([c[0] for c in commands])
    q = np.array([c[1] for c in commands])
    v = np.array([c[2] for c in commands])
    period = 1.0 / 200.0
    consecutive = np.abs(np.diff(stamps) - period) < 0.5 * period
    dv = np.abs(np.diff(v, axis=0))[consecutive]
    travel = float(np.ptp(np.array(measured)[:, :6], axis=0).max())
    p, c = "policy", "controller"
    rows = [
        ("camera frames used (front)", mon.get(p, "frames.front")),
        ("chunks published / received", f"{mon.get(p, 'chunks_published')} / {mon.chunks}"),
        (
            "inference p50 / p95 (ms)",
            f"{mon.get(p, 'inference_p50_ms')} / {mon.get(p, 'inference_p95_ms')}",
        ),
        ("chunk rate (Hz)", mon.get(p, "chunk_rate_hz")),
        ("refused observations", mon.get(p, "refused_observations")),
        (
            "chunks accepted / rejected",
            f"{mon.get(c, 'chunks_accepted')} / {mon.get(c, 'chunks_rejected')}",
        ),
        ("commands sent", f"{len(commands)}"),
        ("measured joint travel (max, rad)", f"{travel:.3f}"),
        ("peak |velocity| / limit", f"{np.max(np.abs(v) / cfg.vmax):.2f}"),
        ("peak |accel| / limit", f"{np.max(dv / (cfg.amax * period)) if len(dv) else 0:.2f}"),
        ("inside soft limits", str(bool(np.all((q >= cfg.soft_lower) & (q <= cfg.soft_upper))))),
        ("controller mode", mon.get(c, "mode")),
    ]
    width = max(len(r[0]) for r in rows)
    print("\n" + "\n".join(f"  {name:<{width}}  {value}" for name, value in rows))
    ok = mon.get(c, "mode") == "running" and mon.get(c, "chunks_accepted") not in ("?", "0")
    if not ok:
        print("the arm did not run on policy chunks; see the node output above", file=sys.stderr)
    return 0 if ok else 1


def _list_graphs() -> None:
    for g in GRAPHS.values():
        print(f"{g.name}: {g.description}\n  nodes: {', '.join(n.name for n in g.nodes)}")
        for arg in g.arguments:
            choices = f" [{'|'.join(arg.choices)}]" if arg.choices else ""
            print(f"  {arg.name}:={arg.default!r}{choices}  {arg.description}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="dream-vla", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_demo = sub.add_parser("demo", help="run the simulated graph and summarise what the arm did")
    p_demo.add_argument("--seconds", type=float, default=30.0)
    p_demo.add_argument("args", nargs="*", help="launch arguments of the sim graph, name:=value")
    p_launch = sub.add_parser("launch", help="run a node graph without ros2 launch")
    p_launch.add_argument("graph", nargs="?", help=f"one of {sorted(GRAPHS)}; none: list them")
    p_launch.add_argument(
        "args",
        nargs=argparse.REMAINDER,
        help="name:=value launch arguments; --print: show commands",
    )
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            sys.exit(demo(args.seconds, args.args))
        if args.graph is None:
            _list_graphs()
            return
        g = graph(args.graph)
        show = "--print" in args.args
        values = parse_arguments(g, [a for a in args.args if a != "--print"])
        if show:
            for node in g.nodes:
                print(f"{node.name}: {shlex.join(node_command(node, values))}")
            return
        sys.exit(launch(g, values))
    except LaunchError as exc:
        print(f"dream-vla: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
