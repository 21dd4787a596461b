"""Helpers for tests that start real nodes in real processes over local DDS (the
client that talks to them is the tools' own: dream_vla_ros.ros.client.GraphClient)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class NodeProcess:
    """`python -m MODULE --ros-args ...` in its own process group, with its output kept."""

    def __init__(
        self, module: str, params: dict[str, object], name: str = "proc", node_name: str = ""
    ) -> None:
        args = [sys.executable, "-u", "-m", module, "--ros-args"]
        if node_name:
            args += ["-r", f"__node:={node_name}"]
        for key, value in params.items():
            if isinstance(value, bool):
                value = str(value).lower()
            elif isinstance(value, list | tuple):
                if all(isinstance(v, str) for v in value):
                    value = "[" + ",".join(f"'{v}'" for v in value) + "]"
                elif all(isinstance(v, int) for v in value):
                    value = "[" + ",".join(str(v) for v in value) + "]"
                else:
                    value = "[" + ",".join(repr(float(v)) for v in value) + "]"
            args += ["-p", f"{key}:={value}"]
        self.log_path = Path(os.environ.get("PYTEST_TMP", "/tmp")) / f"{name}-{os.getpid()}.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            args, stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text()

    def stop(self, timeout: float = 10.0) -> int:
        if self.alive():
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode


def wait_for(predicate: Callable[[], bool], timeout: float, what: str | Callable[[], str]) -> None:
    """`what` names what is awaited; a callable is asked only on a timeout (state to show).
    A timeout fails the test (AssertionError)."""
    from dream_vla_ros.ros.client import wait_until

    wait_until(predicate, timeout, what, AssertionError)


def collect_without_recorder(log_path: Path, seed: int):
    """The `collect` graph's simulated controller, schematic cameras (160x120) and
    scripted teleop (seeded), launched; the tests run their own recorder. Returns
    (launcher, log file): shut the launcher down, then close the log."""
    from dream_vla_ros.graphs import COLLECT, Graph, parse_arguments
    from dream_vla_ros.launcher import Launcher

    nodes = tuple(COLLECT.node(n) for n in ("controller", "sim_camera", "teleop"))
    g = Graph("world", "collect without its recorder", (), nodes)
    values = parse_arguments(COLLECT, ["camera_width:=160", "camera_height:=120", f"seed:={seed}"])
    log = open(log_path, "w")  # noqa: SIM115 - the caller closes it
    return Launcher(g, values, out=log, grace_s=5.0).start(), log
