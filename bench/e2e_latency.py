"""End-to-end latency of the policy path with the tiny model (prints figures).

Part 1, in one process (no DDS): per stage for two 640x480 cameras: raw-image
decode, JPEG decode, preprocessing, model forward, chunk message; and the
baseline a straightforward node would use (PIL image objects + transformers'
Qwen2-VL image processor) on the same frames.

Part 2, the live sim graph (dream-vla launch sim, real processes over local
DDS, 2x640x480 raw cameras): the policy node's own stage figures, the
controller's chunk age at acceptance, and camera stamp -> first command sent
after the chunk arrived. Target: everything except the model forward <= 10 ms.

Usage: python bench/e2e_latency.py [--seconds 25] [--head l1|flow|discrete]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time

import numpy as np

from dream_vla_ros.graphs import graph, parse_arguments
from dream_vla_ros.launcher import Launcher


def median_ms(fn, repeats: int = 30) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)


def in_process(head: str) -> float:
    import torch
    from PIL import Image
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (
        Qwen2VLImageProcessorPil,
    )

    from dream_vla_ros.data.images import decode_compressed, decode_raw, encode_jpeg, encode_raw
    from dream_vla_ros.policy import Observation, Policy, write_random_checkpoint
    from dream_vla_ros.ros.conversions import chunk_message
    from dream_vla_ros.sim.schematic import SchematicScene

    torch.set_num_threads(1)
    scene = SchematicScene()
    q = np.array([0.0, 0.6, -0.6, 0.0, 0.3, 0.0, 0.02])
    frames = [scene.render_front(q), scene.render_wrist(q)]
    raws = [encode_raw(f) for f in frames]
    jpegs = [encode_jpeg(f) for f in frames]
    with tempfile.TemporaryDirectory() as tmp:
        policy = Policy.from_checkpoint(write_random_checkpoint(f"{tmp}/m", "tiny", head=head))
    obs = Observation(frames, "pick up the red cube", q, 1.0)
    chunk = policy.infer(obs)

    t_raw = median_ms(lambda: [decode_raw(*r) for r in raws])
    t_jpeg = median_ms(lambda: [decode_compressed("jpeg", j) for j in jpegs])
    t_pre = median_ms(lambda: policy.images(frames))
    t_total = median_ms(lambda: policy.infer(obs), 15)
    t_msg = median_ms(lambda: chunk_message(1.0, [f"j{i}" for i in range(7)], chunk.actions, 0.05))
    reference = Qwen2VLImageProcessorPil(max_pixels=224 * 224, min_pixels=224 * 224)

    def baseline() -> None:
        images = [Image.fromarray(np.frombuffer(r[4], np.uint8).reshape(480, 640, 3)) for r in raws]
        reference(images=[im.resize((224, 224), Image.BICUBIC) for im in images])

    t_base = median_ms(baseline)
    print(f"in-process, 2x640x480, tiny {head} head, 1 torch thread (median ms):")
    print(f"  raw decode        {t_raw:7.3f}")
    print(f"  JPEG decode       {t_jpeg:7.3f}   (compressed cameras instead of raw)")
    print(
        f"  preprocessing     {t_pre:7.3f}   baseline PIL + transformers: {t_base:.3f} "
        f"({t_base / t_pre:.1f}x)"
    )
    print(f"  model (infer - preprocessing) {t_total - t_pre:7.3f}")
    print(f"  chunk message     {t_msg:7.3f}")
    non_model = t_raw + t_pre + t_msg
    print(f"  non-model total (raw cameras) {non_model:.3f} ms (target <= 10 ms)")
    return non_model


def live(seconds: float, head: str) -> None:
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.node import Node
    from sensor_msgs.msg import JointState
    from trajectory_msgs.msg import JointTrajectory

    from dream_vla_ros.ros.conversions import time_to_sec

    g = graph("sim")
    sink = open(os.devnull, "w")  # noqa: SIM115 - the node output is not part of the figures
    launcher = Launcher(g, parse_arguments(g, [f"head:={head}"]), out=sink)
    os.environ.update(launcher.env)
    launcher.start()
    rclpy.init()
    node = Node("e2e_bench")
    lock = threading.Lock()
    diag: dict[str, dict[str, str]] = {}
    arrivals: list[tuple[float, float]] = []  # (chunk stamp, arrival here)
    commands: list[float] = []

    def on_diag(msg) -> None:
        with lock:
            for s in msg.status:
                diag[s.name] = {kv.key: kv.value for kv in s.values}

    def on_chunk(msg) -> None:
        now = node.get_clock().now().nanoseconds * 1e-9
        with lock:
            arrivals.append((time_to_sec(msg.header.stamp), now))

    def on_command(msg) -> None:
        with lock:
            commands.append(time_to_sec(msg.header.stamp))

    node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 10)
    node.create_subscription(JointTrajectory, "/dream_vla/action_chunk", on_chunk, 10)
    node.create_subscription(JointState, "/controller/command", on_command, 500)
    deadline = time.monotonic() + 120
    ready_at = None
    try:
        while time.monotonic() < deadline:
            rclpy.spin_once(node, timeout_sec=0.05)
            if launcher.check() or launcher.deaths:
                raise SystemExit(f"the graph failed: {launcher.failed or launcher.deaths[0]}")
            with lock:
                ready = diag.get("dream_vla/policy", {}).get("ready") == "True"
            if ready and ready_at is None:
                ready_at = time.monotonic()
                deadline = ready_at + seconds
                with lock:
                    arrivals.clear()
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
        launcher.shutdown()
        sink.close()
    policy = diag.get("dream_vla/policy", {})
    controller = diag.get("dream_vla/controller", {})
    cmd = np.array(sorted(commands))
    to_command = []
    for stamp, arrival in arrivals:
        i = np.searchsorted(cmd, arrival)
        if i < len(cmd):
            to_command.append(cmd[i] - stamp)
    to_command_ms = np.array(to_command) * 1e3

    def stage(name: str) -> float:
        return float(policy.get(f"stage.{name}_p50_ms", "nan"))

    stamp_to_publish = stage("stamp_to_publish")
    chunk_age = float(controller.get("chunk_age_p50_ms", "nan"))
    model = stage("model")
    print(f"\nlive sim graph, {seconds:.0f} s after warm-up, 2x640x480 raw cameras (p50 ms):")
    print(
        f"  policy: decode {stage('decode'):.2f}, preprocessing {stage('preprocess'):.2f}, "
        f"model {model:.2f}, publish {stage('publish'):.2f}"
    )
    print(
        f"  camera stamp -> policy node {stage('transport'):.1f}, waiting for inference "
        f"{stage('queue'):.1f}"
    )
    print(f"  camera stamp -> chunk published     {stamp_to_publish:.1f}")
    print(
        f"  camera stamp -> accepted by controller {chunk_age:.1f} "
        f"(pickup {chunk_age - stamp_to_publish:.1f})"
    )
    if to_command_ms.size:
        p50 = float(np.median(to_command_ms))
        print(
            f"  camera stamp -> first command after the chunk {p50:.1f} "
            f"(p95 {np.percentile(to_command_ms, 95):.1f}, {to_command_ms.size} chunks)"
        )
        print(
            f"  everything except the model forward: {p50 - model:.1f} ms (target <= 10 ms; "
            "includes image transport and queueing on this shared 2-core host)"
        )
    print(
        f"  chunk rate {policy.get('chunk_rate_hz')} Hz, dropped observations "
        f"{policy.get('dropped_observations')}, refused {policy.get('refused_observations')}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=25.0)
    parser.add_argument("--head", default="l1", choices=("l1", "flow", "discrete"))
    parser.add_argument("--no-live", action="store_true", help="skip the live graph")
    args = parser.parse_args()
    in_process(args.head)
    if not args.no_live:
        live(args.seconds, args.head)


if __name__ == "__main__":
    main()
