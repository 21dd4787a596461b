"""`dream-vla launch GRAPH [arg:=value ...]`: run a graph of dream_vla_ros.graphs
without `ros2 launch` (no ROS imports here).

One process per node, each in its own process group, all with the project's DDS
settings (localhost only, one ROS_DOMAIN_ID); their output is prefixed with the
node name. SIGINT/SIGTERM are forwarded once. Children that do not stop within the
grace period are killed with their whole process group, so no process is left
behind.

Supervision: the controller owns the arm and is the graph's critical node; when it
exits the graph stops. When another node exits (policy, cameras, recorder, teleop)
the controller runs on, its watchdog brings the arm to a hold, and the launcher says
which node ended and how, then restarts it after a back-off that doubles from 1 s
(at most RESTARTS times) when its NodeSpec says `restart`, or leaves it down with
the graph still up. The launcher exits non-zero when any node died. A restarted
node gets a DDS participant id that no earlier process of the graph had (see
dream_vla_ros.dds: a killed node's shared-memory port must not be reused while the
other nodes still write to it).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO

from dream_vla_ros.dds import (
    OPT_OUT_VAR,
    RESTART_PARTICIPANT_IDS,
    domain_id_for,
    local_dds_env,
    parse_domain_id,
    remove_dead_segments,
    write_participant_profile,
)
from dream_vla_ros.graphs import Graph, NodeSpec, node_command

RESTARTS = 5  # restarts of one node before it is left down
# the kernel lets go of a killed process's file locks a moment after it was reaped
# (the last close of its files is deferred): look for its DDS segments this much later
SWEEP_DELAY_S = 0.5
BACKOFF_S = (1.0, 30.0)  # the first restart's delay, doubling up to the second


def describe_exit(rc: int) -> str:
    """'exited with code 1' / 'was killed by SIGKILL' / 'exited cleanly'."""
    if rc < 0:
        try:
            return f"was killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"was killed by signal {-rc}"
    return f"exited with code {rc}" if rc else "exited cleanly"


class Child:
    def __init__(
        self,
        name: str,
        cmd: list[str],
        env: dict[str, str],
        out: IO[str],
        nice: int = 0,
        spec: NodeSpec | None = None,
    ) -> None:
        self.name = name
        if nice and shutil.which("nice"):  # nice execs the node: same pid, lower priority
            cmd = ["nice", "-n", str(nice), *cmd]
        self.cmd = cmd
        self.env = env
        self.spec = spec
        self._out = out
        self.restarts = 0
        self.restart_at: float | None = None  # monotonic time of a pending restart
        self.down = False  # ended, not to be restarted
        self._spawn()

    def _spawn(self) -> None:
        self.proc = subprocess.Popen(
            self.cmd,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # our own Ctrl-C is forwarded, exactly once
            text=True,
            bufsize=1,
        )
        self._pump = threading.Thread(target=self._forward, args=(self.proc,), daemon=True)
        self._pump.start()

    def restart(self, env: dict[str, str] | None = None) -> None:
        self.restarts += 1
        self.restart_at = None
        if env is not None:
            self.env = env
        self._spawn()

    def _forward(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
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
            domain_id = parse_domain_id(os.environ.get("ROS_DOMAIN_ID", domain_id_for()))
        self.env = local_dds_env(domain_id=domain_id)
        self.env.setdefault("RCUTILS_LOGGING_BUFFERED_STREAM", "0")
        self.out = out or sys.stdout
        self.grace_s = grace_s
        self.children: list[Child] = []
        self._stop = threading.Event()
        self.failed: str = ""  # why the graph stopped (its critical node ended)
        self.deaths: list[str] = []  # every node that ended while the graph ran
        # a graph without a critical node stops when any node ends
        self._critical = {n.name for n in g.nodes if n.critical} or {n.name for n in g.nodes}
        self._restart_ids = iter(RESTART_PARTICIPANT_IDS)
        self._profiles: tempfile.TemporaryDirectory | None = None
        # a segment younger than this is never taken for dead (it may be being created)
        self.segment_min_age_s = 2.0
        self._sweep_at: float | None = None  # when to remove what a killed node left

    def restart_env(self) -> tuple[dict[str, str], str]:
        """The environment for a restarted node (a fresh DDS participant id) and a
        phrase naming it for the log ('' when the user's own DDS settings apply)."""
        if self.env.get(OPT_OUT_VAR) == "system":
            return self.env, ""
        participant_id = next(self._restart_ids, None)
        if participant_id is None:  # more restarts than fresh ids: the automatic id
            return self.env, ", DDS participant id automatic (no fresh one left)"
        if self._profiles is None:
            self._profiles = tempfile.TemporaryDirectory(prefix="dream_vla_dds_")
        path = Path(self._profiles.name) / f"participant_{participant_id}.xml"
        profile = write_participant_profile(path, participant_id)
        return local_dds_env(self.env, profile=profile), f", DDS participant id {participant_id}"

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
            self.children.append(Child(node.name, cmd, self.env, self.out, node.nice, node))
        return self

    def _say(self, text: str) -> None:
        self.out.write(f"[launch] {text}\n")
        self.out.flush()

    def request_stop(self, *_args) -> None:
        self._stop.set()

    def check(self) -> int:
        """0 while the graph runs; else the exit code of its critical node (or 1).

        Every other node that ended is reported once, then restarted when it is due
        (its NodeSpec's `restart`, a doubling back-off, at most RESTARTS times) or
        left down."""
        now = time.monotonic()
        if self._sweep_at is not None and now >= self._sweep_at:
            self._sweep_at = None
            self.free_dead_segments()
        for child in self.children:
            if child.down:
                continue
            if child.restart_at is not None:
                if now >= child.restart_at:
                    env, how = self.restart_env()
                    child.restart(env)
                    self._say(
                        f"node '{child.name}' restarted ({child.restarts} of {RESTARTS}{how})"
                    )
                continue
            rc = child.proc.poll()
            if rc is None:
                continue
            what = f"node '{child.name}' {describe_exit(rc)}"
            self.deaths.append(what)
            if rc < 0:  # killed: its DDS segments stay in /dev/shm
                self._sweep_at = now + SWEEP_DELAY_S
            if child.name in self._critical:
                child.down = True
                self.failed = what
                self._say(f"{what}; it is critical: stopping the graph")
                return rc or 1
            spec = child.spec
            if spec is not None and spec.restart and child.restarts < RESTARTS:
                delay = min(BACKOFF_S[0] * 2**child.restarts, BACKOFF_S[1])
                child.restart_at = now + delay
                self._say(f"{what}; restarting it in {delay:.0f} s, the graph runs on")
            else:
                child.down = True
                after = f" after {RESTARTS} restarts" if spec is not None and spec.restart else ""
                self._say(f"{what}; it stays down{after}, the graph runs on")
        return 0

    def run(self, poll_s: float = 0.1) -> int:
        """Supervise until a stop request or the critical node ends; then shut
        everything down.

        Returns 0 after a requested stop when no node died and every node ended
        cleanly, otherwise non-zero (the critical node's exit code, or 1)."""
        code = 0
        try:
            while not self._stop.is_set() and not code:
                code = self.check()
                if not code:
                    self._stop.wait(poll_s)
        finally:
            clean = self.shutdown()
        if not clean and not code:
            self._say(self.failed)
        if self.deaths and not code:
            self._say(f"stopped; during the run: {'; '.join(self.deaths)}")
        return code or (0 if clean and not self.deaths else 1)

    def free_dead_segments(self) -> int:
        """Remove the shared-memory segments killed DDS processes left in /dev/shm
        (dds.dead_segments) and say how much was freed; nothing with DREAM_VLA_DDS=system."""
        if self.env.get(OPT_OUT_VAR) == "system":
            return 0
        freed = remove_dead_segments(min_age_s=self.segment_min_age_s)
        if freed:
            self._say(
                f"removed {freed / 2**20:.1f} MiB of DDS shared memory that killed processes "
                "left in /dev/shm"
            )
        return freed

    def shutdown(self) -> bool:
        """SIGINT every node, wait the grace period, then SIGKILL what is left (with its
        process group). True when every node ended cleanly on SIGINT."""
        running = [c for c in self.children if c.alive()]
        for child in running:
            child.proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + self.grace_s
        clean = True
        for child in running:
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
        if self._sweep_at is not None or any(c.proc.returncode == -signal.SIGKILL for c in running):
            time.sleep(SWEEP_DELAY_S)
            self._sweep_at = None
            self.free_dead_segments()
        if self._profiles is not None:
            self._profiles.cleanup()
            self._profiles = None
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
