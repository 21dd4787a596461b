"""The inference loop of the policy node, without ROS: its own thread takes the
newest synchronised observation from an ObservationBuffer, runs the policy and
hands the chunk to a publish callback. Message callbacks never wait on it.

It warms the model up before it reports ready, refuses (and says why) when the
inputs are missing or stale, and keeps the figures /diagnostics reports:
inference latency p50/p95, chunk rate, dropped and stale observations.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from dream_vla_ros.policy.observations import ObservationBuffer, Refused
from dream_vla_ros.policy.policy import ActionChunk, Observation, ObservationError


@dataclass(frozen=True)
class RunnerSettings:
    max_rate_hz: float = 0.0  # 0: as fast as frames and the model allow
    extra_delay_s: float = 0.0  # test hook: artificial inference delay before publishing
    warmup_iterations: int = 2
    poll_s: float = 0.1

    def __post_init__(self) -> None:
        if self.max_rate_hz < 0 or self.extra_delay_s < 0 or self.warmup_iterations < 0:
            raise ValueError("max_rate_hz, extra_delay_s and warmup_iterations must be >= 0")


@dataclass
class RunnerStats:
    chunks: int = 0
    errors: int = 0
    latencies_s: deque = field(default_factory=lambda: deque(maxlen=200))
    stages_s: dict[str, deque] = field(default_factory=dict)
    publish_times: deque = field(default_factory=lambda: deque(maxlen=50))  # monotonic
    refused: Counter = field(default_factory=Counter)
    discarded: int = 0  # inferred, not published: disabled or new instruction meanwhile
    clock_s: float | None = None  # the episode clock of the last chunk published (if read)

    def add_stage(self, name: str, seconds: float) -> None:
        self.stages_s.setdefault(name, deque(maxlen=200)).append(seconds)


class PolicyRunner:
    def __init__(
        self,
        infer: Callable[[Observation], ActionChunk],
        buffer: ObservationBuffer,
        publish: Callable[[ActionChunk], None],
        now: Callable[[], float],
        instruction: str,
        warmup_observation: Callable[[], Observation],
        settings: RunnerSettings | None = None,
        log: Callable[[str], None] = print,
        after_warmup: Callable[[], None] | None = None,
    ) -> None:
        self.infer = infer
        self.buffer = buffer
        self.publish = publish
        self.now = now
        self.settings = settings or RunnerSettings()
        self.log = log
        self.stats = RunnerStats()
        self.ready = False
        self.problem = "warming up"
        self.extra_delay_s = self.settings.extra_delay_s  # adjustable while running
        self._paused = False
        # Publishing happens under _gate, and pausing or a new instruction takes it and
        # bumps _epoch: once either returns, no chunk inferred before is published.
        self._gate = threading.Lock()
        self._epoch = 0
        self._warmup_observation = warmup_observation
        # e.g. Policy.reset: the warm-up inferences are not the first episode's (its
        # sampler draws and its clock start with the first real observation)
        self._after_warmup = after_warmup
        self._instruction = instruction
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="policy-inference", daemon=True)
        self._last_logged = ""
        self.fatal: BaseException | None = None

    # -- control ------------------------------------------------------------------------
    def start(self) -> PolicyRunner:
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout_s)

    @property
    def paused(self) -> bool:
        """True: no inference, nothing published (frames are dropped)."""
        return self._paused

    @paused.setter
    def paused(self, value: bool) -> None:
        with self._gate:
            if value != self._paused:
                self._epoch += 1
            self._paused = bool(value)

    def supersede(self) -> None:
        """A chunk being inferred now will not be published (e.g. after a reset)."""
        with self._gate:
            self._epoch += 1

    @property
    def instruction(self) -> str:
        with self._lock:
            return self._instruction

    def set_instruction(self, text: str) -> None:
        text = text.strip()
        if not text:
            raise ValueError("the instruction is empty")
        with self._gate, self._lock:
            self._instruction = text
            self._epoch += 1

    # -- the thread ---------------------------------------------------------------------
    def _run(self) -> None:
        try:
            for _ in range(self.settings.warmup_iterations):
                if self._stop.is_set():
                    return
                self.infer(self._warmup_observation())
            if self._after_warmup is not None:
                self._after_warmup()
        except Exception as exc:  # a model that cannot run never becomes ready
            self.fatal = exc
            self.problem = f"warm-up failed: {exc!r}"
            self.log(self.problem)
            return
        self.ready = True
        self.problem = ""
        self.log(f"policy ready after {self.settings.warmup_iterations} warm-up inference(s)")
        last_stamp: float | None = None
        while not self._stop.is_set():
            if self.paused:
                self.buffer.clear()
                time.sleep(self.settings.poll_s)
                continue
            if not self.buffer.wait_for_new(self.settings.poll_s):
                self._note_problem(self.buffer.input_problem(self.now()))
                continue
            if self.settings.max_rate_hz > 0:
                # Over the rate budget: skip this frame rather than hold it back, so
                # the frame inference does start on is fresh (not aged by the wait).
                # The budget is counted in capture stamps, which a camera spaces
                # evenly, not in arrival times, which jitter: 10 Hz frames under a
                # 5 Hz cap are taken every second one, not every second or third.
                stamp = self.buffer.newest_stamp()
                gap = 0.9 / self.settings.max_rate_hz
                recent = stamp is not None and last_stamp is not None
                if recent and 0.0 <= stamp - last_stamp < gap:  # < 0: a replay looped
                    self.buffer.skip()
                    continue
                last_stamp = stamp
            self._step()

    def _step(self) -> None:
        epoch = self._epoch
        taken_at = self.now()
        try:
            taken = self.buffer.take(taken_at)
        except Refused as exc:
            self.stats.refused[exc.reason] += 1
            self._note_problem(f"not publishing: {exc.detail}")
            return
        if taken is None:
            return
        obs = Observation(taken.images, self.instruction, taken.state, taken.stamp_s)
        try:
            chunk = self.infer(obs)
        except ObservationError as exc:
            self.stats.refused["bad_observation"] += 1
            self._note_problem(f"not publishing: {exc}")
            return
        except Exception as exc:  # keep the node alive; the error is reported
            self.stats.errors += 1
            self._note_problem(f"inference failed: {exc!r}")
            return
        if self.extra_delay_s > 0:
            time.sleep(self.extra_delay_s)
        with self._gate:
            if self._paused or self._epoch != epoch:
                self.stats.discarded += 1  # disabled, or the instruction changed
                return
            start = time.perf_counter()
            try:
                self.publish(chunk)
            except Exception as exc:  # e.g. the middleware going away at shutdown
                self.stats.errors += 1
                self._note_problem(f"publishing failed: {exc!r}")
                return
            publish_s = time.perf_counter() - start
        self.stats.chunks += 1
        self.stats.clock_s = chunk.clock_s
        self.stats.latencies_s.append(taken.decode_s + chunk.latency_s)
        self.stats.add_stage("transport", taken.received_s - taken.stamp_s)  # stamp -> node
        self.stats.add_stage("queue", taken_at - taken.received_s)  # node -> inference start
        self.stats.add_stage("decode", taken.decode_s)
        for name, seconds in chunk.timings.items():
            self.stats.add_stage(name.removesuffix("_s"), seconds)
        self.stats.add_stage("publish", publish_s)
        self.stats.add_stage("stamp_to_publish", self.now() - chunk.stamp_s)
        self.stats.publish_times.append(time.monotonic())
        self._note_problem("")

    def _note_problem(self, problem: str) -> None:
        self.problem = problem
        if problem and problem != self._last_logged:
            self.log(problem)
        self._last_logged = problem

    # -- figures ------------------------------------------------------------------------
    def chunk_rate_hz(self) -> float:
        times = list(self.stats.publish_times)
        if len(times) < 2 or time.monotonic() - times[-1] > 2.0:
            return 0.0
        return (len(times) - 1) / (times[-1] - times[0])

    def summary(self) -> dict[str, str]:
        """The key/values of the node's diagnostics (milliseconds, Hz, counts)."""
        lat = np.array(self.stats.latencies_s) * 1e3
        buf = self.buffer.stats
        values = {
            "ready": str(self.ready),
            "enabled": str(not self.paused),
            "instruction": self.instruction,
            "chunks_published": str(self.stats.chunks),
            "chunk_rate_hz": f"{self.chunk_rate_hz():.2f}",
            "inference_p50_ms": f"{np.percentile(lat, 50):.1f}" if lat.size else "nan",
            "inference_p95_ms": f"{np.percentile(lat, 95):.1f}" if lat.size else "nan",
            "dropped_observations": str(buf.dropped),
            "stale_observations": str(self.stats.refused["stale"]),
            "refused_observations": str(sum(self.stats.refused.values())),
            "inference_errors": str(self.stats.errors),
            "discarded_chunks": str(self.stats.discarded),
            "bad_joint_states": str(buf.bad_joint_states),
        }
        if self.stats.clock_s is not None:
            values["episode_clock_s"] = f"{self.stats.clock_s:.2f}"
        for reason, count in sorted(self.stats.refused.items()):
            values[f"refused.{reason}"] = str(count)
        for role, count in sorted(buf.frames.items()):
            values[f"frames.{role}"] = str(count)
        for stage, samples in sorted(self.stats.stages_s.items()):
            values[f"stage.{stage}_p50_ms"] = f"{np.percentile(np.array(samples), 50) * 1e3:.2f}"
        return values
