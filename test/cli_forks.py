"""Run `dream-vla` command lines each in its own process, forked from one interpreter
that imported the package and its heavy dependencies once.

    python test/cli_forks.py CASES.json RESULTS.json

CASES.json: a list of {"name", "argv", "env", "cwd"}. Each case runs in a child
forked from this process, with its environment, working directory, standard output
and error of its own, as `dream-vla ARGV` would: `main` returns or raises
SystemExit (its status), an uncaught exception prints its traceback and exits 1,
the exit handlers the command registered run. RESULTS.json maps each name to
{"returncode", "stdout", "stderr"}. Forking saves the several seconds each fresh
interpreter spends importing torch and transformers (the 36 bad inputs of
test_cli_errors.py: 5 minutes on a 2-core VM, 13 s forked).
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

TIMEOUT_S = 120.0


def _child(argv: list[str], env: dict[str, str], cwd: str, out: str, err: str) -> int:
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    for fd, path in ((1, out), (2, err)):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(target, fd)
        os.close(target)
    sys.argv = ["dream-vla", *argv]
    # the exit handlers are the command's own, as in a fresh process (not the
    # parent's, which would remove its scratch folder)
    atexit._clear()
    code = 0
    try:
        from dream_vla_ros.cli import main

        main(argv)
    except SystemExit as stop:
        if isinstance(stop.code, int):
            code = stop.code
        elif stop.code is not None:
            print(stop.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    return code


def run_case(case: dict, scratch: Path) -> dict:
    out, err = scratch / f"{os.getpid()}.out", scratch / f"{os.getpid()}.err"
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = _child(case["argv"], case["env"], case["cwd"], str(out), str(err))
        finally:
            os._exit(code)
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            break
        time.sleep(0.02)
    return {
        "returncode": os.waitstatus_to_exitcode(status),
        "stdout": out.read_text(errors="replace") if out.exists() else "",
        "stderr": err.read_text(errors="replace") if err.exists() else "",
    }


def main() -> None:
    cases = json.loads(Path(sys.argv[1]).read_text())
    # what the commands import, imported once before any fork (no threads started)
    import dream_vla_ros.cli
    import dream_vla_ros.evaluation.pipeline
    import dream_vla_ros.finetune.trainer
    import dream_vla_ros.model.modeling  # noqa: F401

    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        for case in cases:
            results[case["name"]] = run_case(case, Path(scratch))
    Path(sys.argv[2]).write_text(json.dumps(results))


if __name__ == "__main__":
    main()
