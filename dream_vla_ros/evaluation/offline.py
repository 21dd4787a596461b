"""Open-loop evaluation of a policy over a recorded bag (`dream-vla eval-bag`; no ROS imports).

At evaluation times t (front-camera frames, at most one per `every_s`), the
policy sees what it would have seen live: the front frame at t, the newest
wrist frame at or before t, the measured joint state at t, the instruction.
Its chunk holds targets for t + (k+1) dt; they are compared with what the arm
actually did next: the measured joint state interpolated at those times
(points past the end of the bag are left out). Outputs:

- `summary.json`: per-joint MAE and RMSE by horizon step, overall figures,
  gripper open/closed accuracy (threshold `gripper_threshold_m`), inference
  latency p50/p95, how many predictions were made or skipped and why;
- `joint_<name>.png`: the measured trajectory with each predicted chunk drawn
  from its start time;
- `report.md`: a short human-readable report.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dream_vla_ros.control import JOINT_NAMES
from dream_vla_ros.data.bags import (
    BagError,
    decode_image_message,
    image_refs,
    open_bag,
    read_joint_series,
)
from dream_vla_ros.data.episode import EpisodeError, read_meta


@dataclass(frozen=True)
class EvalSettings:
    instruction: str = ""  # empty: the episode's instruction
    cameras: tuple[tuple[str, str], ...] = ()  # (role, topic); empty: from episode.json
    state_topic: str = "/joint_states"
    every_s: float = 0.5
    max_predictions: int = 200
    image_tolerance_s: float = 0.15
    gripper_threshold_m: float = 0.035
    typestore: str = "ros2_kilted"
    # the bag's joint names -> joint1..joint6, gripper (a third-party arm's names)
    joint_map: tuple[tuple[str, str], ...] = ()


def _interp(times: np.ndarray, values: np.ndarray, at: np.ndarray) -> np.ndarray:
    return np.stack([np.interp(at, times, values[:, j]) for j in range(values.shape[1])], axis=-1)


def _load_inputs(bag: Path, s: EvalSettings) -> tuple[str, list[tuple[str, str]]]:
    instruction, cameras = s.instruction, list(s.cameras)
    episode = bag if (bag / "episode.json").is_file() else bag.parent
    if (not instruction or not cameras) and (episode / "episode.json").is_file():
        try:
            meta = read_meta(episode)
        except EpisodeError as exc:
            raise BagError(str(exc)) from None
        instruction = instruction or meta.instruction
        cameras = cameras or [(c["role"], c["topic"]) for c in meta.cameras]
    if not instruction:
        raise BagError("no instruction: pass --instruction (the bag has no episode.json)")
    if not cameras:
        raise BagError("no cameras: pass --camera ROLE=TOPIC (the bag has no episode.json)")
    roles = [r for r, _ in cameras]
    if roles[0] != "front":
        raise BagError(f"the first camera must be the front camera, got roles {roles}")
    return instruction, cameras


def evaluate_bag(bag: str | Path, policy: Any, out_dir: str | Path, s: EvalSettings) -> dict:
    from dream_vla_ros.policy.policy import Observation, ObservationError

    bag, out = Path(bag), Path(out_dir)
    instruction, cameras = _load_inputs(bag, s)
    with open_bag(bag, s.typestore) as reader:
        measured = read_joint_series(reader, s.state_topic, dict(s.joint_map) or None)
        stamps: dict[str, np.ndarray] = {}
        for role, topic in cameras:
            refs, _zero = image_refs(reader, topic)
            stamps[role] = np.array([r.stamp_s for r in refs])
        # evaluation times: front frames, thinned to one per every_s
        chosen: list[int] = []
        last = -np.inf
        for i, t in enumerate(stamps["front"]):
            if t - last >= s.every_s and measured.times_s[0] <= t <= measured.times_s[-1]:
                chosen.append(i)
                last = t
        chosen = chosen[: s.max_predictions]
        if not chosen:
            raise BagError("no front frame lies inside the joint-state recording")
        # the frames needed, decoded in one pass per camera
        need: dict[str, dict[int, float]] = {"front": {i: stamps["front"][i] for i in chosen}}
        for role, _topic in cameras[1:]:
            st = stamps[role]
            need[role] = {}
            for i in chosen:
                pos = int(np.searchsorted(st, stamps["front"][i], side="right")) - 1
                if pos >= 0:
                    need[role][pos] = st[pos]
        frames: dict[str, dict[int, np.ndarray]] = {}
        for role, topic in cameras:
            conns = [c for c in reader.connections if c.topic == topic]
            frames[role] = {}
            for k, (conn, _ns, raw) in enumerate(reader.messages(connections=conns)):
                if k in need[role]:
                    frames[role][k] = decode_image_message(reader.deserialize(raw, conn.msgtype))

    reset = getattr(policy, "reset", None)
    if callable(reset):
        reset()  # a bag is one episode: a fresh sampler, and a clock from its first frame
    predictions: list[tuple[float, np.ndarray, float]] = []
    latencies: list[float] = []
    skipped: dict[str, int] = {}
    for i in chosen:
        t = float(stamps["front"][i])
        images = [frames["front"][i]]
        for role, _topic in cameras[1:]:
            st = stamps[role]
            pos = int(np.searchsorted(st, t, side="right")) - 1
            if pos < 0 or t - st[pos] > s.image_tolerance_s:
                skipped[f"no_{role}_frame"] = skipped.get(f"no_{role}_frame", 0) + 1
                images = []
                break
            images.append(frames[role][pos])
        if not images:
            continue
        state = _interp(measured.times_s, measured.positions, np.array([t]))[0]
        try:
            start = time.perf_counter()
            chunk = policy.infer(Observation(images, instruction, state, t))
            latencies.append(time.perf_counter() - start)
        except ObservationError as exc:
            key = f"refused: {exc}"
            skipped[key] = skipped.get(key, 0) + 1
            continue
        predictions.append((t, np.asarray(chunk.actions), float(chunk.period_s)))
    if not predictions:
        raise BagError(f"the policy made no prediction on this bag ({skipped})")

    horizon = max(len(p[1]) for p in predictions)
    dim = len(JOINT_NAMES)
    err_sum = np.zeros((horizon, dim))
    sq_sum = np.zeros((horizon, dim))
    count = np.zeros(horizon)
    grip_ok = grip_n = 0
    end_t = measured.times_s[-1]
    for t, actions, period in predictions:
        times = t + period * np.arange(1, len(actions) + 1)
        keep = times <= end_t
        if not keep.any():
            continue
        actual = _interp(measured.times_s, measured.positions, times[keep])
        diff = actions[keep] - actual
        n = int(keep.sum())
        err_sum[:n] += np.abs(diff)
        sq_sum[:n] += diff**2
        count[:n] += 1
        grip_pred = actions[keep, 6] > s.gripper_threshold_m
        grip_true = actual[:, 6] > s.gripper_threshold_m
        grip_ok += int((grip_pred == grip_true).sum())
        grip_n += n
    valid = count > 0
    mae = np.full((horizon, dim), np.nan)
    rmse = np.full((horizon, dim), np.nan)
    mae[valid] = err_sum[valid] / count[valid, None]
    rmse[valid] = np.sqrt(sq_sum[valid] / count[valid, None])
    lat = np.array(latencies) * 1e3
    summary = {
        "bag": str(bag),
        "instruction": instruction,
        "cameras": [{"role": r, "topic": t} for r, t in cameras],
        "predictions": len(predictions),
        "skipped": skipped,
        "horizon_steps": horizon,
        "period_s": predictions[0][2],
        "joint_names": list(JOINT_NAMES),
        "mae_by_step": np.where(np.isnan(mae), None, mae).tolist(),
        "rmse_by_step": np.where(np.isnan(rmse), None, rmse).tolist(),
        "mae_arm_rad": float(np.nanmean(mae[:, :6])),
        "mae_first_step_arm_rad": float(np.nanmean(mae[0, :6])),
        "mae_gripper_m": float(np.nanmean(mae[:, 6])),
        "gripper_accuracy": grip_ok / grip_n if grip_n else None,
        "latency_ms": {"p50": float(np.percentile(lat, 50)), "p95": float(np.percentile(lat, 95))},
        "settings": asdict(s),
    }
    out.mkdir(parents=True, exist_ok=True)  # only once the inputs have been read
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    _plots(out, measured, predictions)
    _report(out, summary)
    return summary


def _plots(out: Path, measured: Any, predictions: list) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = measured.times_s[0]
    for j, name in enumerate(JOINT_NAMES):
        fig, ax = plt.subplots(figsize=(8, 3))
        ax.plot(measured.times_s - t0, measured.positions[:, j], "k-", lw=1.5, label="measured")
        for k, (t, actions, period) in enumerate(predictions):
            times = t + period * np.arange(1, len(actions) + 1) - t0
            ax.plot(times, actions[:, j], "-", color="tab:orange", lw=0.8, alpha=0.7,
                    label="predicted chunks" if k == 0 else None)  # fmt: skip
        ax.set_xlabel("time [s]")
        ax.set_ylabel(f"{name} [{'m' if name == 'gripper' else 'rad'}]")
        ax.legend(loc="best", fontsize=8)
        fig.tight_layout()
        fig.savefig(out / f"joint_{name}.png", dpi=80)
        plt.close(fig)


def _report(out: Path, summary: dict) -> None:
    mae = np.array([[np.nan if v is None else v for v in row] for row in summary["mae_by_step"]])
    steps = [0, len(mae) // 2, len(mae) - 1]
    lines = [
        f"# Open-loop evaluation of {summary['bag']}",
        "",
        f'Instruction: "{summary["instruction"]}"; {summary["predictions"]} predictions, '
        f"horizon {summary['horizon_steps']} steps of {summary['period_s']} s.",
        "",
        f"- arm MAE: {summary['mae_arm_rad']:.4f} rad over all steps, "
        f"{summary['mae_first_step_arm_rad']:.4f} rad at the first step",
        f"- gripper MAE: {summary['mae_gripper_m'] * 1000:.1f} mm, open/closed accuracy "
        + (
            f"{summary['gripper_accuracy']:.2f}"
            if summary["gripper_accuracy"] is not None
            else "n/a"
        ),
        f"- inference latency p50 {summary['latency_ms']['p50']:.1f} ms, "
        f"p95 {summary['latency_ms']['p95']:.1f} ms",
        f"- skipped observations: {summary['skipped'] or 'none'}",
        "",
        "| joint | " + " | ".join(f"MAE step {k + 1}" for k in steps) + " |",
        "|---|" + "---|" * len(steps),
    ]
    for j, name in enumerate(summary["joint_names"]):
        lines.append(f"| {name} | " + " | ".join(f"{mae[k, j]:.4f}" for k in steps) + " |")
    lines += ["", "Plots: " + ", ".join(f"joint_{n}.png" for n in summary["joint_names"])]
    (out / "report.md").write_text("\n".join(lines) + "\n")
