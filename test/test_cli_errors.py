"""Every `dream-vla` command on bad inputs: a non-zero exit, one line on stderr that
names the problem, no traceback, and nothing left behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Bad inputs: an empty folder, a folder of .mcap without metadata, a truncated
    MCAP bag, a checkpoint without config.json, a recipe that is not YAML."""
    root = tmp_path_factory.mktemp("bad")
    (root / "empty").mkdir()
    (root / "unfinished").mkdir()
    (root / "unfinished" / "part_0.mcap").write_bytes(b"\x89MCAP0\r\n")
    truncated = root / "truncated"
    truncated.mkdir()
    (truncated / "metadata.yaml").write_text(
        "rosbag2_bagfile_information:\n  version: 8\n  storage_identifier: mcap\n"
        "  relative_file_paths: [t.mcap]\n  duration: {nanoseconds: 0}\n"
        "  starting_time: {nanoseconds_since_epoch: 0}\n  message_count: 0\n"
        "  topics_with_message_count: []\n  compression_format: ''\n  compression_mode: ''\n"
        "  files: []\n  custom_data: {}\n  ros_distro: kilted\n"
    )
    (truncated / "t.mcap").write_bytes(b"\x89MCAP0\r\n" + b"\x00" * 40)
    (root / "no_config").mkdir()
    (root / "recipe.yaml").write_text("data: [unclosed\n")
    (root / "bad_json").mkdir()
    (root / "bad_json" / "config.json").write_text("{not json")
    return root


CASES = [
    ("demo", ["demo", "--checkpoint", "{bad}/no_config", "--seeds", "1", "--out", "{out}"]),
    ("launch unknown graph", ["launch", "moon"]),
    ("launch bad argument", ["launch", "sim", "colour:=red"]),
    ("launch bad domain", ["launch", "sim"], {"ROS_DOMAIN_ID": "150"}),
    ("dataset build", ["dataset", "build", "{bad}/missing", "{out}"]),
    ("dataset recover", ["dataset", "recover", "{bad}/missing"]),
    ("dataset merge", ["dataset", "merge", "{bad}/missing", "{bad}/empty", "{out}"]),
    ("play missing", ["play", "{bad}/missing"]),
    ("play empty folder", ["play", "{bad}/empty"]),
    ("play unfinished", ["play", "{bad}/unfinished"]),
    ("play truncated", ["play", "{bad}/truncated"]),
    ("eval-bag missing", ["eval-bag", "{bad}/missing", "--checkpoint", "{bad}/no_config"]),
    ("eval-bag bad checkpoint", ["eval-bag", "{bad}/truncated", "--checkpoint", "{bad}/bad_json"]),
    ("train missing recipe", ["train", "{bad}/missing.yaml"]),
    ("train bad recipe", ["train", "{bad}/recipe.yaml"]),
    ("train bad override", ["train", "config/finetune/touch_tiny_cpu.yaml", "train.lr=-1"]),
    ("merge", ["merge", "{bad}/no_config", "{out}"]),
    ("sim collect", ["sim", "collect", "{out}", "--per-layout", "7"]),
    (
        "sim collect offline touch miss",
        ["sim", "collect", "{out}", "--offline", "--miss-radius", "0.02"],
    ),
    (
        "sim collect offline random starts",
        ["sim", "collect", "{out}", "--task", "place", "--offline", "--random-starts", "1"],
    ),
    (
        "sim collect dagger touch",
        ["sim", "collect", "{out}", "--dagger", "models/place_tiny"],
    ),
    (
        "sim collect dagger handover",
        [
            "sim",
            "collect",
            "{out}",
            "--task",
            "place",
            "--dagger",
            "models/place_tiny",
            "--handover-s",
            "3",
        ],
    ),
    (
        "sim collect dagger bad checkpoint",
        ["sim", "collect", "{out}", "--task", "place", "--dagger", "{bad}/no_config"],
    ),
    (
        "sim collect offline miss",
        ["sim", "collect", "{out}", "--task", "place", "--offline", "--miss-radius", "0.2"],
    ),
    ("sim evaluate", ["sim", "evaluate", "{bad}/no_config", "{out}"]),
    ("sim pipeline", ["sim", "pipeline", "{out}", "--recipe", "{bad}/recipe.yaml"]),
    ("sim proxy missing", ["sim", "proxy", "{bad}/no_config"]),
    ("sim proxy bad option", ["sim", "proxy", "models/touch_tiny", "--execute", "0"]),
    ("sim proxy bowl touch", ["sim", "proxy", "models/touch_tiny", "--bowl", "purple"]),
    (
        "sim proxy unknown cube",
        ["sim", "proxy", "models/place_tiny", "--task", "place", "--cube", "pink"],
    ),
    (
        "sim proxy unknown bowl",
        ["sim", "proxy", "models/place_tiny", "--task", "place", "--bowl", "pink"],
    ),
    ("sim ground", ["sim", "ground", "{out}", "--layouts", "0"]),
    ("sim ground image size", ["sim", "ground", "{out}", "--image-size", "300"]),
    ("sim ground vision width", ["sim", "ground", "{out}", "--vision-width", "40"]),
    # an official finetune output without its merged weights
    ("convert no weights", ["convert", "test/data/official/finetune_l1", "{out}"]),
    ("convert bad chunk", ["convert", "test/data/official/base", "{out}", "--chunk", "0"]),
    ("convert ambiguous key", ["convert", "test/data/official/base", "{out}"]),
    ("export not a checkpoint", ["export", "{bad}/no_config", "{out}"]),
    ("export tiny", ["export", "models/touch_tiny", "{out}"]),
    ("usage", ["train"]),
    ("unknown command", ["fly"]),
]


@pytest.fixture(scope="module")
def answers(corpus, tmp_path_factory) -> dict:
    """Every case's command line, each in its own process forked from one interpreter
    that imported the package once (test/cli_forks.py): name -> returncode, stdout,
    stderr; and the folder each case was told to write into."""
    scratch = tmp_path_factory.mktemp("cli")
    cases = []
    for name, argv, *extra in CASES:
        out = scratch / name.replace(" ", "_") / "out"
        out.parent.mkdir()
        args = [a.format(bad=corpus, out=out) for a in argv]
        env = {**os.environ, **(extra[0] if extra else {})}
        cases.append({"name": name, "argv": args, "env": env, "cwd": str(ROOT), "out": str(out)})
    (scratch / "cases.json").write_text(json.dumps(cases))
    run = subprocess.run(
        [sys.executable, str(ROOT / "test" / "cli_forks.py"), "cases.json", "results.json"],
        cwd=scratch,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    results = json.loads((scratch / "results.json").read_text())
    return {c["name"]: {**results[c["name"]], "args": c["argv"], "out": c["out"]} for c in cases}


def _ends_in_one_line(returncode: int, stdout: str, stderr: str) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert returncode != 0, stdout + stderr
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1, stderr
    assert lines[0].startswith("dream-vla"), lines[0]


@pytest.mark.timeout(900)
@pytest.mark.parametrize("name", [c[0] for c in CASES])
def test_a_bad_input_ends_in_one_line(name, answers):
    answer = answers[name]
    _ends_in_one_line(answer["returncode"], answer["stdout"], answer["stderr"])
    # nothing left behind for a pipeline, collection or evaluation that never started
    out = Path(answer["out"])
    if answer["args"][0] in ("sim", "eval-bag", "dataset", "merge", "demo", "convert", "export"):
        assert not out.exists() or not any(out.rglob("*")), list(out.rglob("*"))


@pytest.mark.parametrize("argv", [["train"], ["launch", "moon"]], ids=["usage", "unknown graph"])
def test_the_installed_command_answers_in_one_line_from_a_fresh_interpreter(argv):
    """The same answers from `python -m dream_vla_ros.cli` started afresh, as a shell
    starts `dream-vla`."""
    run = subprocess.run(
        [sys.executable, "-m", "dream_vla_ros.cli", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    _ends_in_one_line(run.returncode, run.stdout, run.stderr)


def test_the_corpus_covers_every_command():
    from dream_vla_ros.cli import build_parser

    parser = build_parser()
    commands = set(parser._subparsers._group_actions[0].choices)
    covered = {argv[0] for _, argv, *_ in CASES}
    assert commands <= covered, commands - covered
