"""Restarts of a killed subscriber over the project's localhost DDS (prints figures;
not a test).

A publisher sends two 640x480 rgb8 image topics at 30 Hz (the shared-memory
transport carries them). A subscriber process is started, must receive 3 images
within --wait-s, is killed with SIGKILL after a random 0-1 s, and is started again,
--restarts times. Two rounds, each with its own publisher and ROS_DOMAIN_ID:
`automatic`, every subscriber takes its DDS participant id automatically (what any
process does); `fresh`, every subscriber gets an id no earlier one had, from
RESTART_PARTICIPANT_IDS (what `dream-vla launch` gives a restarted node). With
--load N, N busy loops run beside them (a loaded host is where the automatic ids
lose the stream: see dream_vla_ros/dds.py). --rounds repeats both rounds, each
time with a new publisher and new domains.

Usage: python bench/dds_restart.py [--restarts 16] [--rounds 1] [--load 2] [--wait-s 10]
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dream_vla_ros.dds import (
    RESTART_PARTICIPANT_IDS,
    domain_id_for,
    local_dds_env,
    write_participant_profile,
)

TOPICS = ("/bench/front", "/bench/wrist")


def publish(rate_hz: float) -> None:
    import rclpy
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image

    rclpy.init()
    node = rclpy.create_node("bench_images")
    pubs = [node.create_publisher(Image, t, qos_profile_sensor_data) for t in TOPICS]
    msg = Image(width=640, height=480, encoding="rgb8", step=1920)
    msg.data = bytes(640 * 480 * 3)
    due = time.monotonic()
    while True:
        for pub in pubs:
            pub.publish(msg)
        due += 1.0 / rate_hz
        rclpy.spin_once(node, timeout_sec=max(0.0, due - time.monotonic()))


def subscribe() -> None:
    import rclpy
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image

    rclpy.init()
    node = rclpy.create_node("bench_restarted")
    count = 0

    def on_image(_msg: Image) -> None:
        nonlocal count
        count += 1
        if count == 3:
            print("received", flush=True)

    subs = [node.create_subscription(Image, t, on_image, qos_profile_sensor_data) for t in TOPICS]
    assert subs
    rclpy.spin(node)


def spawn(role: str, env: dict[str, str], **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-u", __file__, "--role", role], env=env, **kw)


def received_within(proc: subprocess.Popen, wait_s: float) -> tuple[bool, float]:
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), False)
    start, text = time.monotonic(), b""
    while time.monotonic() - start < wait_s:
        text += proc.stdout.read() or b""
        if b"received" in text:
            return True, time.monotonic() - start
        time.sleep(0.05)
    return False, wait_s


def one_round(
    mode: str, restarts: int, wait_s: float, folder: Path, rng: random.Random, domain: int
):
    env = local_dds_env(domain_id=domain)
    ids = iter(RESTART_PARTICIPANT_IDS)
    publisher = spawn("pub", env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    outcomes: list[tuple[bool, float]] = []
    try:
        for i in range(restarts):
            sub_env = env
            if mode == "fresh":
                participant_id = next(ids, None)
                if participant_id is None:
                    break
                profile = write_participant_profile(folder / f"{domain}_{i}.xml", participant_id)
                sub_env = local_dds_env(env, profile=profile)
            sub = spawn("sub", sub_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            outcomes.append(received_within(sub, wait_s))
            time.sleep(rng.uniform(0.0, 1.0))
            sub.kill()
            sub.wait()
    finally:
        publisher.kill()
        publisher.wait()
    return outcomes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--role", choices=("bench", "pub", "sub"), default="bench")
    ap.add_argument("--restarts", type=int, default=len(RESTART_PARTICIPANT_IDS))
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--load", type=int, default=2, help="busy loops beside the processes")
    ap.add_argument("--wait-s", type=float, default=10.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.role == "pub":
        publish(30.0)
        return
    if args.role == "sub":
        subscribe()
        return
    if args.restarts > len(RESTART_PARTICIPANT_IDS):
        ap.error(f"--restarts must be at most {len(RESTART_PARTICIPANT_IDS)} (the fresh ids)")
    burners = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.load)
    ]
    rng = random.Random(args.seed)
    rows = []
    try:
        with tempfile.TemporaryDirectory(prefix="dds_restart_") as folder:
            for r in range(args.rounds):
                for k, mode in enumerate(("automatic", "fresh")):
                    domain = domain_id_for(os.getpid() + 2 * r + k)
                    outcomes = one_round(
                        mode, args.restarts, args.wait_s, Path(folder), rng, domain
                    )
                    got = [dt for ok, dt in outcomes if ok]
                    lost = next((i for i, (ok, _) in enumerate(outcomes) if not ok), None)
                    rows.append((f"{mode}, round {r + 1}", len(outcomes), len(got), lost, got))
                    print(rows[-1][:4], flush=True)
    finally:
        for proc in burners:
            proc.kill()
            proc.wait()
    print(f"{args.restarts} restarts a round, {args.load} busy loops, wait {args.wait_s:g} s")
    print(
        "| participant ids | restarts | received | first restart that received nothing "
        "| median s to 3 images |"
    )
    print("|---|---|---|---|---|")
    for mode, n, ok, first_lost, got in rows:
        median = f"{sorted(got)[len(got) // 2]:.1f}" if got else "-"
        lost = "-" if first_lost is None else str(first_lost + 1)
        print(f"| {mode} | {n} | {ok} | {lost} | {median} |")


if __name__ == "__main__":
    main()
