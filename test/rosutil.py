"""Helpers for tests that start real nodes in real processes over local DDS (the
client that talks to them is the tools' own: dream_vla_ros.ros.client.GraphClient)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
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
    """`what` names what is awaited; a callable is asked only on a timeout (state to show)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            text = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout} s waiting for {text}")
        time.sleep(0.01)
