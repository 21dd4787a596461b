"""What an rclpy executor costs a node's inference thread (prints figures).

The policy node stores messages in its callbacks and runs the model on its own
thread; the controller runs its control loop on its own thread. Both used to
spin a `MultiThreadedExecutor`. In the rclpy of this environment (9.1.2) that
executor re-yields a callback that is queued in its thread pool but not started
yet, and returns from its wait at once while one exists (ros2/rclpy#1452, fixed
upstream by #1547): its spin thread busy-loops holding the GIL whenever messages
flow, and every other Python thread of the process waits for the interpreter.

This benchmark measures it. A child process publishes what the policy node
receives in the simulated graph (two 320x240 raw images at 10 Hz each, joint
states at 50 Hz); this process subscribes (callbacks only store, as the policy
node's do) and times the tiny flow policy's inference on a fourth thread:

  alone                  no executor, no messages (the model's own figure)
  SingleThreadedExecutor what the nodes spin now
  MultiThreadedExecutor  what they spun before (3 threads, as the nodes had)

and prints inference p50/p95 and the process's CPU use for each. As in the
graph, the process runs at nice 10 beside busy processes (`--load`, standing in
for the controller, renderer and driver on a 2-core host): without that load the
spinning costs little, with it the pool's worker threads start late, the spin
thread loops the longer, and the inference thread starves. The loop feeds itself
or not: some trials run 4x slower, others hardly slower, so each configuration
runs `--trials` times with a fresh executor. Target: the single-threaded
executor's worst trial within 1.5x of "alone" at p50.

Usage: python bench/executor_spin.py [--seconds 6] [--trials 3] [--load 2] [--nice 10]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import tempfile
import threading
import time

import numpy as np

from dream_vla_ros.dds import apply_local_dds, domain_id_for

FRONT, WRIST, JOINTS = "/bench/front", "/bench/wrist", "/bench/joint_states"


def publisher(stop) -> None:  # the child process (spawned: its own rclpy)
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image, JointState

    rclpy.init()
    node = rclpy.create_node("bench_inputs")
    pubs = [node.create_publisher(Image, t, qos_profile_sensor_data) for t in (FRONT, WRIST)]
    pub_js = node.create_publisher(JointState, JOINTS, 50)
    image = Image(height=240, width=320, encoding="rgb8", step=960)
    image.data = bytes(np.random.default_rng(0).integers(0, 255, 240 * 320 * 3, np.uint8))

    def images() -> None:
        image.header.stamp = node.get_clock().now().to_msg()
        for pub in pubs:
            pub.publish(image)

    def joints() -> None:
        msg = JointState(name=[f"joint{i}" for i in range(1, 7)], position=[0.1] * 6)
        msg.header.stamp = node.get_clock().now().to_msg()
        pub_js.publish(msg)

    node.create_timer(0.1, images)
    node.create_timer(0.02, joints)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    while not stop.is_set():
        executor.spin_once(timeout_sec=0.1)
    rclpy.shutdown()


def burn(stop) -> None:  # a child process: the controller and renderer's share of the CPU
    while not stop.is_set():
        sum(i * i for i in range(20000))
        time.sleep(0.004)


def time_inference(infer, seconds: float) -> tuple[np.ndarray, float]:
    """Inference latencies [ms] over `seconds`, and the process's CPU use [% of a core]."""
    latencies = []
    cpu0, wall0 = time.process_time(), time.monotonic()
    while time.monotonic() - wall0 < seconds:
        start = time.perf_counter()
        infer()
        latencies.append(time.perf_counter() - start)
        time.sleep(0.05)  # the node infers at a bounded rate, not back to back
    cpu = (time.process_time() - cpu0) / (time.monotonic() - wall0) * 100
    return np.array(latencies) * 1e3, cpu


def with_executor(make_executor, infer, seconds: float) -> tuple[np.ndarray, float]:
    """time_inference while a node of this process, spun by `make_executor()` on its
    own thread, stores the publisher's messages as the policy node does."""
    import rclpy
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image, JointState

    node = rclpy.create_node("bench_policy_inputs")
    received = {"images": 0, "joints": 0}
    latest: dict[str, object] = {}

    def on_image(msg, key: str) -> None:  # what image_frame does: a copy to numpy
        latest[key] = np.frombuffer(msg.data, np.uint8).reshape(240, 320, 3).copy()
        received["images"] += 1

    def on_joints(msg) -> None:
        latest["joints"] = msg
        received["joints"] += 1

    for topic in (FRONT, WRIST):
        node.create_subscription(
            Image, topic, lambda m, k=topic: on_image(m, k), qos_profile_sensor_data
        )
    node.create_subscription(JointState, JOINTS, on_joints, 50)
    node.create_timer(1.0, lambda: None)  # the node's diagnostics timer
    executor = make_executor()
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    try:
        deadline = time.monotonic() + 10.0
        while received["images"] < 10 and time.monotonic() < deadline:
            time.sleep(0.1)
        if received["images"] < 10:
            raise SystemExit("no images arrived from the publisher process within 10 s")
        before = dict(received)
        result = time_inference(infer, seconds)
        rate = {k: (received[k] - before[k]) / seconds for k in received}
        print(
            f"  {type(executor).__name__}: received {rate['images']:.0f} images/s, "
            f"{rate['joints']:.0f} joint states/s"
        )
        return result
    finally:
        executor.remove_node(node)
        executor.shutdown()
        spinner.join(5.0)
        node.destroy_node()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="per trial")
    parser.add_argument("--trials", type=int, default=3, help="per configuration")
    parser.add_argument(
        "--load", type=int, default=2, help="busy processes beside it (the graph's other nodes)"
    )
    parser.add_argument("--nice", type=int, default=10, help="this process's niceness (graph: 10)")
    args = parser.parse_args()
    apply_local_dds(domain_id=domain_id_for())
    spawn = mp.get_context("spawn")
    stop = spawn.Event()
    burners = [spawn.Process(target=burn, args=(stop,), daemon=True) for _ in range(args.load)]
    for p in burners:
        p.start()
    os.nice(args.nice)

    import rclpy
    import torch
    from rclpy.executors import MultiThreadedExecutor, SingleThreadedExecutor

    from dream_vla_ros.policy import Observation, Policy, write_random_checkpoint

    torch.set_num_threads(1)  # as config/policy_sim.yaml
    with tempfile.TemporaryDirectory() as tmp:
        policy = Policy.from_checkpoint(write_random_checkpoint(f"{tmp}/m", "tiny", head="flow"))
    frames = [np.zeros((240, 320, 3), np.uint8)] * 2
    obs = Observation(frames, "touch the red cube", np.zeros(7), 0.0)
    for _ in range(3):
        policy.infer(obs)

    def infer() -> None:
        policy.infer(obs)

    results = {"alone": [time_inference(infer, args.seconds) for _ in range(args.trials)]}

    child = spawn.Process(target=publisher, args=(stop,), daemon=True)
    child.start()
    rclpy.init()
    try:
        for name, make in (
            ("SingleThreadedExecutor", SingleThreadedExecutor),
            ("MultiThreadedExecutor(3)", lambda: MultiThreadedExecutor(num_threads=3)),
        ):
            # a fresh executor per trial: the busy loop starts in some runs, not in others
            results[name] = [with_executor(make, infer, args.seconds) for _ in range(args.trials)]
    finally:
        stop.set()
        for p in (child, *burners):
            p.join(5.0)
        rclpy.shutdown()

    print(
        f"\ntiny flow policy inference, 1 torch thread, inputs of the simulated graph, "
        f"{args.trials} trials of {args.seconds:.0f} s each (p50 ms / p95 ms / process CPU):"
    )
    worst = {}
    for name, trials in results.items():
        cells = [
            f"{np.percentile(lat, 50):6.1f} /{np.percentile(lat, 95):6.1f} /{cpu:4.0f} %"
            for lat, cpu in trials
        ]
        worst[name] = max(np.percentile(lat, 50) for lat, _ in trials)
        print(f"  {name:26s} " + "   ".join(cells))
    alone = min(np.percentile(lat, 50) for lat, _ in results["alone"])
    single, multi = worst["SingleThreadedExecutor"], worst["MultiThreadedExecutor(3)"]
    print(
        f"\nworst trial p50 against the best alone: SingleThreadedExecutor {single / alone:.2f}x "
        f"(target <= 1.5x: {'met' if single <= 1.5 * alone else 'NOT met'}), "
        f"MultiThreadedExecutor {multi / alone:.2f}x"
    )


if __name__ == "__main__":
    main()
