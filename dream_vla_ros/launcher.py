"""`dream-vla launch GRAPH [arg:=value ...]`: run a graph of dream_vla_ros.graphs
without `ros2 launch` (no ROS imports here).

One process per node, each in its own process group, all with the project's DDS
settings (localhost only, one ROS_DOMAIN_ID); their output is prefixed with the
node name. SIGINT/SIGTERM are forwarded once; a node that exits while the graph
runs stops the others and makes the launcher exit non-zero. Children that do not
stop within the grace period are killed with their whole process group, so no
process is left behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from typing import IO

from dream_vla_ros.dds import domain_id_for, local_dds_env
from dream_vla_ros.graphs import Graph, node_command


class Child:
    def __init__(
        self, name: str, cmd: list[str], env: dict[str, str], out: IO[str], nice: int = 0
    ) -> None:
        self.name = name
        if nice and shutil.which("nice"):  # nice execs the node: same pid, lower priority
            cmd = ["nice", "-n", str(nice), *cmd]
        self.cmd = cmd
        self.proc = subprocess.Popen(
            cmd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # our own Ctrl-C is forwarded, exactly once
            text=True,
            bufsize=1,
        )
        self._out = out
        self._pump = threading.Thread(target=self._forward, daemon=True)
        self._pump.start()

    def _forward(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._out.write(f"[{self.name}] {line}")
            self._out.flush()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)


class Launcher:
    def __init__(
        self,
        g: Graph,
        values: dict[str, str],
        domain_id: int | None = None,
        out: IO[str] | None = None,
        grace_s: float = 10.0,
    ) -> None:
        self.graph = g
        self.values = values
        if domain_id is None:
            domain_id = int(os.environ.get("ROS_DOMAIN_ID", domain_id_for()))
        self.env = local_dds_env(domain_id=domain_id)
        self.env.setdefault("RCUTILS_LOGGING_BUFFERED_STREAM", "0")
        self.out = out or sys.stdout
        self.grace_s = grace_s
        self.children: list[Child] = []
        self._stop = threading.Event()
        self.failed: str = ""

    @property
    def domain_id(self) -> int:
        return int(self.env["ROS_DOMAIN_ID"])

    def describe(self) -> str:
        dds = (
            "system DDS settings (DREAM_VLA_DDS=system)"
            if self.env.get("DREAM_VLA_DDS") == "system"
            else "DDS on localhost only"
        )
        nodes = ", ".join(n.name for n in self.graph.nodes)
        return f"{nodes} (ROS_DOMAIN_ID={self.domain_id}, {dds})"

    def start(self) -> Launcher:
        for node in self.graph.nodes:
            cmd = node_command(node, self.values)
            self.children.append(Child(node.name, cmd, self.env, self.out, node.nice))
        return self

    def request_stop(self, *_args) -> None:
        self._stop.set()

    def check(self) -> int:
        """0 while every node runs; else the exit code of the first that ended (or 1)."""
        for child in self.children:
            rc = child.proc.poll()
            if rc is not None:
                self.failed = f"node '{child.name}' exited with code {rc}"
                self.out.write(f"[launch] {self.failed}; stopping the graph\n")
                return rc or 1
        return 0

    def run(self, poll_s: float = 0.1) -> int:
        """Supervise until a stop request or a node exits; then shut everything down.

        Returns 0 after a requested stop with every node ending cleanly, otherwise
        non-zero (the first failing node's exit code, or 1)."""
        code = 0
        try:
            while not self._stop.is_set() and not code:
                code = self.check()
                if not code:
                    self._stop.wait(poll_s)
        finally:
            clean = self.shutdown()
        if not clean and not code:
            self.out.write(f"[launch] {self.failed}\n")
        return code or (0 if clean else 1)

    def shutdown(self) -> bool:
        """SIGINT every node, wait the grace period, then SIGKILL what is left (with its
        process group). True when every node ended cleanly on SIGINT."""
        for child in self.children:
            if child.alive():
                child.proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + self.grace_s
        clean = True
        for child in self.children:
            try:
                rc = child.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.out.write(f"[launch] node '{child.name}' ignored SIGINT; killing it\n")
                child.signal_group(signal.SIGKILL)
                rc = child.proc.wait()
            if rc not in (0, -signal.SIGINT):
                clean = False
                if not self.failed:
                    self.failed = f"node '{child.name}' ended with code {rc}"
        return clean


def launch(g: Graph, values: dict[str, str]) -> int:
    launcher = Launcher(g, values)
    launcher.out.write(f"[launch] graph '{g.name}': {launcher.describe()}\n")
    previous = {s: signal.signal(s, launcher.request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        launcher.start()
        return launcher.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
