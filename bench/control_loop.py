"""Control-loop benchmark (prints figures; not a test).

1. Timing: the controller's real tick (PiperArm.read_state -> ChunkController.tick ->
   PiperArm.command, with the CAN-level simulator and piper_sdk threads running in
   the same process, and chunks arriving at 10 Hz from another thread) on the
   PeriodicLoop at 200 and 500 Hz: period error p50/p99/max and compute per tick.
2. Chunk boundaries: the same policy-like chunks (latency 0.1 s, a small
   prediction offset between consecutive chunks) executed by the controller
   (splice + safety filter) and by naive step-through (each point held for its
   action period, the newest chunk's first point taken as soon as it arrives),
   in simulated time: the largest commanded acceleration near chunk switches.

Usage: python bench/control_loop.py [--seconds 5]
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from dataclasses import replace

import numpy as np

from dream_vla_ros.control import (
    JOINT_NAMES,
    ChunkController,
    ChunkRejected,
    SafetyConfig,
    load_safety_config,
)
from dream_vla_ros.control.loop import PeriodicLoop
from dream_vla_ros.robot import FirmwareParams, PiperArm, PiperFirmwareSim, PiperSettings

CFG = load_safety_config()
HOME = np.array([0.0, 0.6, -0.6, 0.0, 0.3, 0.0, 0.02])
AMP = np.array([0.3, 0.2, -0.2, 0.3, 0.2, 0.4, 0.02])
ACTION_DT, HORIZON, LATENCY = 0.05, 20, 0.1


def path(t: float) -> np.ndarray:
    return HOME + AMP * (1 - np.cos(2 * np.pi * 0.4 * t)) / 2


def policy_chunk(t_obs: float, rng: np.random.Generator) -> np.ndarray:
    """(H, 7) targets for t_obs + k*dt, with a per-chunk prediction offset."""
    offset = rng.normal(0.0, 0.01, 7) * np.r_[np.ones(6), 0.1]
    return np.array([path(t_obs + (k + 1) * ACTION_DT) for k in range(HORIZON)]) + offset


def pct(values: list[float] | np.ndarray) -> str:
    a = np.asarray(values) * 1e3
    return (
        f"p50 {np.percentile(a, 50):6.3f}  p99 {np.percentile(a, 99):6.3f}  max {a.max():6.3f} ms"
    )


def timing(rate_hz: float, seconds: float, channel: str) -> dict[str, float]:
    sys.setswitchinterval(0.0005)  # as the controller node does
    sim = PiperFirmwareSim(channel, FirmwareParams.from_safety_config(CFG), HOME).start()
    arm = PiperArm(PiperSettings(can_name=channel, bustype="virtual"))
    arm.connect()
    arm.enable()
    core = ChunkController(CFG, 1.0 / rate_hz)
    t0 = time.monotonic()
    core.activate(arm.read_state().positions, 1.0)
    compute: list[float] = []
    core_compute: list[float] = []

    def tick() -> None:
        start = time.perf_counter()
        now = time.monotonic() - t0 + 1.0
        state = arm.read_state()
        core_start = time.perf_counter()
        command = core.tick(now, state.positions)
        core_compute.append(time.perf_counter() - core_start)
        if command is not None:
            arm.command(command.position)
        compute.append(time.perf_counter() - start)

    stop = threading.Event()

    def feeder() -> None:
        rng = np.random.default_rng(0)
        while not stop.wait(0.1):
            now = time.monotonic() - t0 + 1.0
            # the path starts at HOME when the loop starts (clock time 1.0)
            chunk = policy_chunk(now - 1.0, rng)
            times = [(k + 1) * ACTION_DT for k in range(HORIZON)]
            try:
                core.submit(JOINT_NAMES, now, times, chunk.tolist(), now)
            except ChunkRejected:  # the core faulted (reported below): stop feeding
                return

    loop = PeriodicLoop(rate_hz, tick)
    loop.wake_times = []
    feeder_thread = threading.Thread(target=feeder, daemon=True)
    feeder_thread.start()
    loop.start()
    time.sleep(seconds)
    loop.stop()
    stop.set()
    feeder_thread.join()
    arm.close()
    sim.stop()
    wakes = np.array(loop.wake_times[10:])
    period_error = np.abs(np.diff(wakes) - 1.0 / rate_hz)
    print(f"  {rate_hz:5.0f} Hz  period error {pct(period_error)}")
    print(f"           core compute {pct(core_compute[10:])}   (interpolation + limits)")
    print(f"           whole tick   {pct(compute[10:])}   (+ piper_sdk read and 4-frame command)")
    print(f"           overruns {loop.overruns}   mode {core.mode.value} {core.reason}")
    return {
        "p99_period_error_ms": float(np.percentile(period_error, 99) * 1e3),
        "p50_compute_ms": float(np.percentile(core_compute[10:], 50) * 1e3),
        "p99_compute_ms": float(np.percentile(core_compute[10:], 99) * 1e3),
    }


def core_compute_alone(
    rate_hz: float = 200.0, ticks: int = 4000, cfg: SafetyConfig = CFG
) -> np.ndarray:
    """ChunkController.tick on this thread alone (no simulator or SDK threads), in s."""
    T = 1.0 / rate_hz
    rng = np.random.default_rng(2)
    core = ChunkController(cfg, T)
    core.activate(path(0.0), 0.0)
    times = [(i + 1) * ACTION_DT for i in range(HORIZON)]
    out = []
    for k in range(ticks):
        now = (k + 1) * T
        if k % int(0.1 * rate_hz) == 0:
            core.submit(JOINT_NAMES, now, times, policy_chunk(now, rng).tolist(), now)
        start = time.perf_counter()
        core.tick(now, path(now))
        out.append(time.perf_counter() - start)
    return np.array(out)


def boundaries(rate_hz: float = 200.0, seconds: float = 10.0) -> tuple[float, float]:
    """Max |commanded acceleration| within 25 ms of a chunk switch: (ours, naive)."""
    T = 1.0 / rate_hz
    rng = np.random.default_rng(1)
    core = ChunkController(CFG, T)
    core.activate(path(0.0), 1e-3)
    naive_chunk: tuple[float, np.ndarray] | None = None
    ours, naive, switches = [], [], []
    chunk_period = 0.1
    next_obs = 0.05
    pending: list[tuple[float, float, np.ndarray]] = []  # (arrival, t_obs, chunk)
    for k in range(int(seconds * rate_hz)):
        now = (k + 1) * T
        while next_obs <= now:
            pending.append((next_obs + LATENCY, next_obs, policy_chunk(next_obs, rng)))
            next_obs += chunk_period
        for item in [p for p in pending if p[0] <= now]:
            pending.remove(item)
            arrival, t_obs, chunk = item
            times = [(i + 1) * ACTION_DT for i in range(HORIZON)]
            core.submit(JOINT_NAMES, t_obs, times, chunk.tolist(), arrival)
            naive_chunk = (now, chunk)
            switches.append(now)
        command = core.tick(now, None)
        ours.append(command.position)
        if naive_chunk is None:
            naive.append(path(0.0))
        else:
            start, chunk = naive_chunk
            index = min(int((now - start) / ACTION_DT), HORIZON - 1)
            naive.append(chunk[index])

    def peak_accel(q: list[np.ndarray]) -> float:
        a = np.abs(np.diff(np.array(q), 2, axis=0)) / T**2  # (N-2, 7)
        near = np.zeros(len(a), dtype=bool)
        for s in switches:
            i = int(round(s / T)) - 1
            near[max(0, i - 5) : i + 5] = True
        return float(a[near][:, :6].max())

    return peak_accel(ours), peak_accel(naive)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    print("control loop timing (real tick: driver + sim + core, chunks at 10 Hz)")
    results = {rate: timing(rate, args.seconds, f"bench-{int(rate)}") for rate in (200.0, 500.0)}
    alone = core_compute_alone()
    print(f"  core compute alone (no competing threads) {pct(alone)}")
    # the workspace floor's per-tick check (the path stays above it): same ticks without
    bare = core_compute_alone(cfg=replace(CFG, workspace=None))
    print(f"    baseline without the workspace floor    {pct(bare)}")
    ours, naive = boundaries()
    limit = float(CFG.amax[:6].max())
    print("chunk-boundary acceleration (same chunks, 0.1 s latency, 10 Hz):")
    print(f"  controller   {ours:9.2f} rad/s^2   (configured limit {limit} rad/s^2)")
    print(f"  naive        {naive:9.2f} rad/s^2")
    print(f"  ratio        {naive / ours:9.1f}x lower with splicing + limits")
    r200 = results[200.0]
    print(
        "targets: p99 period error <= 1 ms @200 Hz: "
        f"{'met' if r200['p99_period_error_ms'] <= 1.0 else 'MISSED'}; "
        f"core compute <= 0.3 ms: alone p99 "
        f"{'met' if np.percentile(alone, 99) <= 0.3e-3 else 'MISSED'}, in-process p50 "
        f"{'met' if r200['p50_compute_ms'] <= 0.3 else 'MISSED'} / p99 "
        f"{'met' if r200['p99_compute_ms'] <= 0.3 else 'MISSED'}; "
        f"boundary accel within limit and >= 10x below naive: "
        f"{'met' if ours <= limit + 1e-6 and naive >= 10 * ours else 'MISSED'}"
    )


if __name__ == "__main__":
    main()
