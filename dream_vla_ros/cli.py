"""The `dream-vla` command.

dream-vla demo [--seconds S]   simulated PiPER + controller + demo chunk publisher,
                               then a summary table of what the arm did
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np

from dream_vla_ros.dds import apply_local_dds, domain_id_for
from dream_vla_ros.paths import config_path


def _spawn(module: str, extra: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-u", "-m", module, "--ros-args", *extra],
        start_new_session=True,  # our Ctrl-C is forwarded explicitly, once
    )


def _stop(children: list[subprocess.Popen], timeout: float = 10.0) -> None:
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGINT)
    deadline = time.monotonic() + timeout
    for child in children:
        try:
            child.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()


def demo(seconds: float) -> int:
    apply_local_dds(domain_id=int(os.environ.get("ROS_DOMAIN_ID", domain_id_for())))
    import rclpy  # after the DDS environment is set
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.node import Node
    from sensor_msgs.msg import JointState

    from dream_vla_ros.control import load_safety_config

    cfg = load_safety_config()
    params = str(config_path("controller.yaml"))
    children = [
        _spawn(
            "dream_vla_ros.ros.controller_node",
            ["--params-file", params, "-p", "arm.backend:=sim", "-p", "arm.can_name:=demo"],
        ),
        _spawn("dream_vla_ros.ros.demo_publisher", []),
    ]
    rclpy.init()
    node = Node("dream_vla_demo_monitor")
    lock = threading.Lock()
    measured: list[np.ndarray] = []
    commands: list[tuple[float, np.ndarray, np.ndarray]] = []
    diag: dict[str, str] = {}

    def on_state(msg: JointState) -> None:
        with lock:
            measured.append(np.array(msg.position))

    def on_command(msg: JointState) -> None:
        with lock:
            stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
            commands.append((stamp, np.array(msg.position), np.array(msg.velocity)))

    def on_diag(msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name == "dream_vla/controller":
                with lock:
                    diag.clear()
                    diag.update({kv.key: kv.value for kv in status.values})

    node.create_subscription(JointState, "/joint_states", on_state, 50)
    node.create_subscription(JointState, "/controller/command", on_command, 200)
    node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 10)
    print(
        f"dream-vla demo: simulated PiPER, controller and demo chunks for {seconds:.0f} s "
        f"(ROS_DOMAIN_ID={os.environ['ROS_DOMAIN_ID']}, DDS on localhost only)"
    )
    failed = False
    end = time.monotonic() + seconds
    next_report = time.monotonic() + 2.0
    try:
        while time.monotonic() < end:
            rclpy.spin_once(node, timeout_sec=0.05)
            if any(child.poll() is not None for child in children):
                print("a node exited early; see its output above", file=sys.stderr)
                failed = True
                break
            if time.monotonic() >= next_report:
                next_report += 2.0
                with lock:
                    if measured:
                        q = np.array2string(measured[-1][:6], precision=3, suppress_small=True)
                        print(
                            f"  t={seconds - (end - time.monotonic()):4.1f}s  joints={q}  "
                            f"mode={diag.get('mode', '?')}  "
                            f"chunks={diag.get('chunks_accepted', '?')}"
                        )
    except KeyboardInterrupt:
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
        _stop(children)

    with lock:
        if len(commands) < 2 or not measured:
            print("no commands were executed", file=sys.stderr)
            return 1
        stamps = np.array([c[0] for c in commands])
        q = np.array([c[1] for c in commands])
        v = np.array([c[2] for c in commands])
    period = 1.0 / 200.0
    consecutive = np.abs(np.diff(stamps) - period) < 0.5 * period
    dv = np.abs(np.diff(v, axis=0))[consecutive]
    rows = [
        ("commands sent", f"{len(commands)}"),
        (
            "chunks accepted / rejected",
            f"{diag.get('chunks_accepted', '?')} / {diag.get('chunks_rejected', '?')}",
        ),
        ("joint travel (max, rad)", f"{np.ptp(q[:, :6], axis=0).max():.3f}"),
        ("peak |velocity| / limit", f"{np.max(np.abs(v) / cfg.vmax):.2f}"),
        ("peak |accel| / limit", f"{np.max(dv / (cfg.amax * period)) if len(dv) else 0:.2f}"),
        ("inside soft limits", str(bool(np.all((q >= cfg.soft_lower) & (q <= cfg.soft_upper))))),
        ("controller mode", diag.get("mode", "?")),
    ]
    width = max(len(r[0]) for r in rows)
    print("\n" + "\n".join(f"  {name:<{width}}  {value}" for name, value in rows))
    return 1 if failed or diag.get("mode") != "running" else 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="dream-vla", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_demo = sub.add_parser("demo", help="run the simulated arm with demo chunks")
    p_demo.add_argument("--seconds", type=float, default=12.0)
    args = parser.parse_args(argv)
    if args.command == "demo":
        sys.exit(demo(args.seconds))


if __name__ == "__main__":
    main()
