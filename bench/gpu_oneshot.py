"""The one-shot device run: every GPU measurement of this project in one command and one
report (markdown + JSON), within 8 minutes on a lent H100/H200 including set-up.

    python3 bench/gpu_oneshot.py --out DIR          # on the lent GPU machine
    python bench/gpu_oneshot.py --cpu --out DIR     # the same steps, tiny preset, CPU

Set-up: the lent machine's image has torch, transformers, peft, safetensors,
tokenizers, pyarrow and pytest; the package runs from the checkout (PYTHONPATH) and
no step needs ROS or MuJoCo. PyAV (the GPU training test's toy dataset encodes
video) travels as a wheel: `bench/gpu_wheels.sh` downloads it here into `.whl/`, the
device run carries `.whl`, and this script installs it into /tmp first (no network
needed). Each step runs in its own child process with a time budget. A step that
fails or runs out of time is reported with the end of its output, and the other
steps still run.

Steps:
1. environment: Python, torch, CUDA, the GPU, transformers, peft;
2. the GPU tests (`pytest -m gpu test/test_gpu.py`; on a CPU they are skipped);
3. chunk latency and peak memory of the 7B, bf16, for every decoding mode (discrete
   1 and k steps, left-to-right, flow 4 steps plain, guided and prompt-cached, L1),
   eager and with CUDA graphs (bench/model_latency.py);
4. every speed setting (weights in bf16, int8, fp8) against plain bf16 on the same
   inputs: latency, peak memory, and the largest difference of the un-normalised
   actions [rad] and of the discrete action tokens (bench/speed_settings.py);
5. the 7B LoRA train step (bench/train_step.py, synthetic batches).

The device tool runs it as (carry: .whl):
    PYTHONUNBUFFERED=1 python3 bench/gpu_oneshot.py --out $OUT
and the report is then copied into bench/reports/.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def environment() -> dict:
    import torch

    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "host_cpus": os.cpu_count(),
    }
    for name in ("transformers", "peft", "safetensors", "tokenizers"):
        try:
            env[name] = __import__(name).__version__
        except ImportError:
            env[name] = None
    try:
        env["commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        env["commit"] = None
    return env


SITE = Path("/tmp/dream_vla_site")


def install_carried_wheels() -> str:
    """Install the wheels in .whl/ (when a module they provide is missing) into SITE."""
    wheels = sorted((ROOT / ".whl").glob("*.whl"))
    try:
        import av  # noqa: F401

        return "nothing to install"
    except ImportError:
        pass
    if not wheels:
        return "PyAV is missing and no wheels were carried (bench/gpu_wheels.sh)"
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps"]
    cmd += ["--no-compile", "--target", str(SITE), *map(str, wheels)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        return f"installing {[w.name for w in wheels]} failed: {done.stderr.strip()[-300:]}"
    return f"installed {[w.name for w in wheels]} into {SITE}"


def run_step(name: str, cmd: list[str], budget_s: float, json_file: Path | None) -> dict:
    """One step in a child process: its status, time, output tail and JSON figures."""
    path = [str(ROOT), str(SITE), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in path if p)}
    env["PYTHONUNBUFFERED"] = "1"
    start = time.monotonic()
    try:
        done = subprocess.run(
            cmd, cwd=ROOT, capture_output=True, text=True, timeout=budget_s, env=env
        )
        status = "ok" if done.returncode == 0 else f"failed (exit {done.returncode})"
        output = done.stdout + done.stderr
    except subprocess.TimeoutExpired as exc:
        status = f"timed out after {budget_s:.0f} s"
        output = (
            (exc.stdout or b"").decode(errors="replace")
            if isinstance(exc.stdout, bytes)
            else (exc.stdout or "")
        )
    seconds = time.monotonic() - start
    figures = None
    if json_file is not None and json_file.exists():
        figures = json.loads(json_file.read_text())
    print(f"[{name}] {status} in {seconds:.0f} s", flush=True)
    return {
        "step": name,
        "status": status,
        "seconds": round(seconds, 1),
        "command": " ".join(cmd),
        "output_tail": output[-6000:],
        "figures": figures,
    }


def steps(cpu: bool, work: Path) -> list[tuple[str, list[str], float, Path | None]]:
    py = sys.executable
    if cpu:
        model = ["--presets", "tiny", "--device", "cpu", "--dtype", "fp32", "--repeats", "2"]
        speed = ["--preset", "tiny", "--device", "cpu", "--dtype", "fp32", "--repeats", "2"]
        train = ["--presets", "tiny", "--device", "cpu", "--dtype", "fp32", "--batch", "2"]
        train += ["--steps", "2", "--warmup", "1"]
    else:
        model = ["--presets", "dream-vla-7b", "--device", "cuda", "--dtype", "bf16"]
        model += ["--repeats", "10"]
        speed = ["--preset", "dream-vla-7b", "--device", "cuda", "--dtype", "bf16"]
        speed += ["--repeats", "10"]
        train = ["--presets", "dream-vla-7b", "--device", "cuda", "--dtype", "bf16"]
        train += ["--batch", "8", "--steps", "3", "--warmup", "1"]
    return [
        (
            "gpu tests",
            [py, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "test/test_gpu.py"],
            150.0,
            None,
        ),
        (
            "latency and memory",
            [py, "bench/model_latency.py", *model, "--json", str(work / "latency.json")],
            150.0,
            work / "latency.json",
        ),
        (
            "speed settings",
            [py, "bench/speed_settings.py", *speed, "--json", str(work / "speed.json")],
            120.0,
            work / "speed.json",
        ),
        (
            "LoRA train step",
            [py, "bench/train_step.py", *train, "--configs", "lora-gc", "--synthetic"]
            + ["--json", str(work / "train.json")],
            90.0,
            work / "train.json",
        ),
    ]


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = [
        f"# Device run {report['date']}: {env.get('gpu') or 'CPU (tiny preset)'}",
        "",
        f"Commit {env.get('commit')}; Python {env['python']}, torch {env['torch']} "
        f"(CUDA {env['cuda']}), transformers {env['transformers']}, peft {env['peft']}. "
        f"Total {report['seconds']:.0f} s. Command: `{report['command']}`. "
        f"Set-up: {report['setup']}.",
        "",
        "| step | status | time |",
        "|---|---|---|",
    ]
    lines += [f"| {s['step']} | {s['status']} | {s['seconds']:.0f} s |" for s in report["steps"]]
    for s in report["steps"]:
        lines += ["", f"## {s['step']}", "", f"`{s['command']}`", "", "```"]
        lines += [s["output_tail"].rstrip(), "```"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "bench" / "reports"))
    parser.add_argument("--cpu", action="store_true", help="the same steps on the tiny preset")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import torch

    if not args.cpu and not torch.cuda.is_available():
        sys.exit("gpu_oneshot: no CUDA device here; run with --cpu for the tiny-preset check")
    start = time.monotonic()
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    work = out / "work"
    work.mkdir(exist_ok=True)
    setup = install_carried_wheels()
    print(f"[set-up] {setup}", flush=True)
    report = {
        "date": date,
        "command": " ".join(["python", *sys.argv]),
        "setup": setup,
        "environment": environment(),
        "steps": [run_step(*step) for step in steps(args.cpu, work)],
    }
    report["seconds"] = time.monotonic() - start
    stem = f"device-{date}-{'cpu' if args.cpu else 'gpu'}"
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2))
    (out / f"{stem}.md").write_text(markdown(report))
    for f in work.iterdir():
        f.unlink()
    work.rmdir()
    print(f"gpu_oneshot: report {out / stem}.md ({report['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
