"""The one-shot device run (bench/gpu_oneshot.py) keeps working: on a CPU it runs the
same steps on the tiny preset and writes its report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_one_shot_run_measures_every_step_and_writes_its_report(tmp_path):
    run = subprocess.run(
        [sys.executable, "bench/gpu_oneshot.py", "--cpu", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    [report_file] = tmp_path.glob("device-*-cpu.json")
    report = json.loads(report_file.read_text())
    steps = {s["step"]: s for s in report["steps"]}
    assert list(steps) == ["gpu tests", "latency and memory", "speed settings", "LoRA train step"]
    assert all(s["status"] == "ok" for s in steps.values()), {
        k: (s["status"], s["output_tail"][-800:]) for k, s in steps.items()
    }
    latency = steps["latency and memory"]["figures"]["presets"]["tiny"]
    for mode in ("discrete 1 step", "flow 4 steps", "flow 4 steps, prompt-cached", "L1 regression"):
        assert latency[mode]["ms"] > 0, mode
    rows = {r["weights"]: r for r in steps["speed settings"]["figures"]["rows"]}
    assert set(rows) == {"plain", "int8"}
    assert rows["plain"]["flow max action difference rad"] == 0.0
    assert 0 < rows["int8"]["flow max action difference rad"] < 0.2
    assert steps["LoRA train step"]["figures"]["tiny lora-gc"]["step_s"] > 0
    assert "skipped" in steps["gpu tests"]["output_tail"]  # no CUDA here: skipped, not failed
    markdown = report_file.with_suffix(".md").read_text()
    assert "| speed settings | ok |" in markdown
    assert not (tmp_path / "work").exists()


def test_the_place_tolerance_bench_finds_the_grasps_limit_across_the_fingers():
    """The expert places with its cube believed 2 cm off along the base line and misses
    at 3.5 cm (the fingers open to 7.5 cm around a 4 cm cube)."""
    run = subprocess.run(
        [
            sys.executable,
            "bench/place_tolerance.py",
            "--layouts",
            "2",
            "--errors-cm",
            "0,2,3.5",
            "--directions",
            "radial",
            "--json",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    rows = {r["error_cm"]: r for r in json.loads(run.stdout.splitlines()[-1])}
    assert rows[0.0]["direction"] == "none" and rows[0.0]["placed"] == 2
    assert rows[2.0]["placed"] == 2
    assert rows[3.5]["placed"] == 0 and rows[3.5]["layouts"] == 2
