"""The `policy` node: cameras + /joint_states + instruction -> action chunks.

Message callbacks only store what arrived; inference runs on its own thread
(dream_vla_ros.policy.runner) on the newest synchronised observation and
publishes each chunk as a JointTrajectory stamped with the observation's capture
stamp (docs/architecture.md §3), so the controller compensates inference latency.
The node refuses to publish on missing, stale or malformed inputs and says why
(log, throttled; /diagnostics). Its parameter table (about 40 parameters, each
declared once) makes the module longer than most.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import (
    SetParametersResult,
)
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory

from dream_vla_ros.control import JOINT_NAMES, ConfigError
from dream_vla_ros.ros.conversions import chunk_message, image_frame, time_to_sec
from dream_vla_ros.ros.guards import InputGuard
from dream_vla_ros.ros.node_main import run_node
from dream_vla_ros.ros.parameters import Param, declare_parameters

DEMO_BOX = (  # the random-weights policy acts inside this box around the home pose
    (0.15, 0.85, -0.75, 0.0, 0.45, 0.1, 0.035),
    (0.25, 0.2, 0.2, 0.3, 0.3, 0.3, 0.03),
)


# The policy node's parameters, each declared here once. The defaults run anywhere
# (CPU, fp32); config/policy.yaml holds what the real arm with a GPU changes,
# config/policy_sim.yaml what the CPU simulation changes.
PARAMETERS = (
    Param("model.checkpoint", "", "Checkpoint directory (published layout); empty: random weights"),
    Param(
        "model.unnorm_key",
        "",
        "Dataset statistics of an official checkpoint that holds several (e.g. libero_spatial)",
    ),
    Param("model.preset", "tiny", "Preset of the random-weights model when no checkpoint is given"),
    Param("model.head", "l1", "Action head of the random-weights model: discrete | flow | l1"),
    Param(
        "model.allow_random_weights",
        False,
        "Permit random weights when model.checkpoint is empty (simulation and demos only)",
    ),
    Param("model.seed", 0, "Seed of the random weights and of the action sampler", (0, 2**31 - 1)),
    Param(
        "enabled",
        True,
        "Infer and publish chunks (false: idle, nothing published)",
        dynamic=True,
    ),
    Param("device", "cpu", "Torch device: cpu, cuda, cuda:N"),
    Param("dtype", "fp32", "Model dtype: fp32 | bf16 | fp16"),
    Param("torch_threads", 0, "CPU threads for torch (0: torch's default)", (0, 256)),
    Param(
        "decode.algorithm",
        "maskgit_plus",
        "Discrete head: origin | maskgit_plus | topk_margin | entropy | left_to_right",
    ),
    Param("decode.steps", 1, "Discrete head: unmasking steps (1 = all tokens at once)", (1, 4096)),
    Param(
        "decode.temperature", 0.0, "Discrete head: sampling temperature (0 = greedy)", (0.0, 10.0)
    ),
    Param("decode.top_p", 1.0, "Discrete head: nucleus sampling mass (1 = off)", (0.0, 1.0)),
    Param("flow_steps", 0, "Flow head: Euler steps (0: the checkpoint's)", (0, 1000)),
    Param(
        "flow_prefix_actions",
        0,
        "Flow head: a new chunk's first N actions continue what the previous chunk "
        "planned for those instants (inpainted; 0: off; reset on enable and instruction)",
        (0, 1000),
    ),
    Param(
        "flow_prefix_min_weight",
        1.0,
        "Flow head: weight of the last inpainted action (linear from 1)",
        (0.0, 1.0),
    ),
    Param(
        "flow_noise_correlation",
        0.0,
        "Flow head: share of the start noise common to a chunk's actions (0: independent)",
        (0.0, 1.0),
    ),
    Param(
        "flow_noise_scale",
        1.0,
        "Flow head: scale of the start noise, a sampling temperature (1: as trained; "
        "below 1 the draws lean towards the centre of the learnt distribution)",
        (0.0, 2.0),
    ),
    Param(
        "flow_guidance_scale",
        1.0,
        "Flow head: classifier-free guidance weight on the instruction (1: off; needs "
        "a checkpoint trained with instruction dropout; a second batch row per step)",
        (0.0, 10.0),
    ),
    Param(
        "flow_guidance_until",
        1.0,
        "Flow head: guide only the Euler steps that start before this flow time "
        "(0 = noise, 1 = chunk; 1: every step)",
        (0.0, 1.0),
    ),
    Param(
        "chunk_smooth_degree",
        0,
        "Fit each chunk with a polynomial of this degree in time per joint and publish "
        "the fit (0: off, the actions as sampled); docs/policy_node.md",
        (0, 64),
    ),
    Param(
        "chunk_ensemble",
        0,
        "Average each action with what the last N chunks sampled for the same instant "
        "(temporal ensembling; 0: off; reset on enable and instruction)",
        (0, 64),
    ),
    Param(
        "chunk_views",
        1,
        "Average each chunk over the frames and views - 1 corner crops of 95 % of their "
        "area (test-time augmentation; 1: off; continuous heads); docs/policy_node.md",
        (1, 5),
    ),
    Param("center_crop", False, "Centre-crop images to a square before resizing"),
    Param(
        "cuda_graphs",
        True,
        "On a GPU: capture the vision tower and backbone once per input shape and "
        "replay them (2-2.4x less latency for the 7B at batch 1, docs/model.md)",
    ),
    Param(
        "weights",
        "plain",
        "Backbone linear layers: plain | int8 | fp8 (CUDA, Ada/Hopper); docs/model.md",
    ),
    Param(
        "instruction", "pick up the red cube", "Task instruction (also settable on ~/instruction)"
    ),
    Param(
        "cameras.topics",
        ["/camera/front/image_raw", "/camera/wrist/image_raw"],
        "Camera topics, in the order the model sees them",
    ),
    Param(
        "cameras.kinds",
        ["raw", "raw"],
        "Per camera: raw (sensor_msgs/Image) | compressed (sensor_msgs/CompressedImage)",
    ),
    Param(
        "cameras.roles",
        ["front", "wrist"],
        "Per camera: front | wrist (the first one stamps the observation)",
    ),
    Param("cameras.widths", [0, 0], "Per camera: expected width in pixels (0 = any)"),
    Param("cameras.heights", [0, 0], "Per camera: expected height in pixels (0 = any)"),
    Param("joint_state_topic", "/joint_states", "Measured joint states (the proprio input)"),
    Param("chunk_topic", "/dream_vla/action_chunk", "Output action chunks (JointTrajectory)"),
    Param(
        "action_rate_hz",
        0.0,
        "Time between chunk points = 1/rate (0: the checkpoint's)",
        (0.0, 1000.0),
    ),
    Param("chunk_length", 0, "Points published per chunk (0: all the model predicts)", (0, 4096)),
    Param(
        "max_inference_rate_hz",
        10.0,
        "Upper bound on inferences per second (0: unbounded)",
        (0.0, 1000.0),
    ),
    Param("max_observation_age_s", 0.5, "Older observations are refused [s]", (0.001, 60.0)),
    Param(
        "sync_tolerance_s",
        0.05,
        "Cameras and joint state must be this close in time [s]",
        (0.0, 10.0),
    ),
    Param("warmup_iterations", 2, "Inferences on a blank observation before ready", (0, 100)),
    Param("diagnostics_period_s", 1.0, "Period of /diagnostics [s]", (0.05, 60.0)),
    Param(
        "debug.inference_delay_s",
        0.0,
        "Test hook: extra delay before publishing a chunk [s]",
        (0.0, 10.0),
        dynamic=True,
    ),
)


class PolicyNode(Node):
    def __init__(self) -> None:
        super().__init__("policy")
        p = declare_parameters(self, PARAMETERS)
        self.p = p
        # torch and the model are imported here, after rclpy is up, so a bad
        # parameter is reported before seconds of imports
        import torch

        from dream_vla_ros.model.actions import DecodeSettings
        from dream_vla_ros.policy.observations import CameraSpec, ObservationBuffer, SyncSettings
        from dream_vla_ros.policy.policy import Observation, Policy, PolicySettings
        from dream_vla_ros.policy.runner import PolicyRunner, RunnerSettings

        self.cameras = self._camera_specs(CameraSpec)
        if p["torch_threads"] > 0:
            torch.set_num_threads(p["torch_threads"])
        try:
            settings = PolicySettings(
                decode=DecodeSettings(
                    steps=p["decode.steps"],
                    algorithm=p["decode.algorithm"],
                    temperature=p["decode.temperature"],
                    top_p=p["decode.top_p"] if p["decode.top_p"] < 1.0 else None,
                ),
                flow_steps=p["flow_steps"] or None,
                prefix_actions=p["flow_prefix_actions"],
                prefix_min_weight=p["flow_prefix_min_weight"],
                noise_correlation=p["flow_noise_correlation"],
                noise_scale=p["flow_noise_scale"],
                guidance_scale=p["flow_guidance_scale"],
                guidance_until=p["flow_guidance_until"],
                smooth_degree=p["chunk_smooth_degree"],
                ensemble_chunks=p["chunk_ensemble"],
                views=p["chunk_views"],
                center_crop=p["center_crop"],
                cuda_graphs=p["cuda_graphs"],
                weights=p["weights"],
                seed=p["model.seed"],
            )
            runner_settings = RunnerSettings(
                max_rate_hz=p["max_inference_rate_hz"],
                extra_delay_s=p["debug.inference_delay_s"],
                warmup_iterations=p["warmup_iterations"],
            )
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        self._tmp: tempfile.TemporaryDirectory | None = None
        checkpoint = self._checkpoint_dir()
        self.policy = Policy.from_checkpoint(
            checkpoint, p["dtype"], p["device"], settings, p["model.unnorm_key"]
        )
        cfg = self.policy.cfg.action
        if cfg.action_dim != len(JOINT_NAMES):
            raise ConfigError(
                f"checkpoint {checkpoint} predicts {cfg.action_dim} action dimensions; "
                f"the PiPER needs {len(JOINT_NAMES)} ({', '.join(JOINT_NAMES)})"
            )
        self.period_s = (
            1.0 / p["action_rate_hz"] if p["action_rate_hz"] > 0 else cfg.action_period_s
        )
        self.chunk_length = min(p["chunk_length"] or cfg.chunk, cfg.chunk)
        self.buffer = ObservationBuffer(
            self.cameras,
            JOINT_NAMES,
            SyncSettings(
                max_age_s=p["max_observation_age_s"], sync_tolerance_s=p["sync_tolerance_s"]
            ),
        )
        self.pub_chunk = self.create_publisher(JointTrajectory, p["chunk_topic"], 10)
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.guard = InputGuard(self, report=self._publish_diagnostics)

        for cam in self.cameras:
            msg_type = Image if cam.kind == "raw" else CompressedImage
            self.create_subscription(
                msg_type,
                cam.topic,
                self.guard.callback(cam.topic, lambda msg, cam=cam: self._on_image(cam, msg)),
                qos_profile_sensor_data,
            )
        self._joint_topic = topic = p["joint_state_topic"]
        self.create_subscription(
            JointState, topic, self.guard.callback(topic, self._on_joint_state), 50
        )
        self.create_subscription(
            String, "~/instruction", self.guard.callback("~/instruction", self._on_instruction), 10
        )
        self.create_service(Trigger, "~/reset", self._srv_reset)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.create_timer(p["diagnostics_period_s"], self._publish_diagnostics)

        state_dim = self.policy.cfg.action.state_dim
        image_size = [(c.height or 480, c.width or 640) for c in self.cameras]
        mid_state = 0.5 * (self.policy.action_stats.q01 + self.policy.action_stats.q99)

        def warmup() -> Observation:
            return Observation(
                [np.zeros((h, w, 3), np.uint8) for h, w in image_size],
                p["instruction"],
                mid_state[:state_dim] if state_dim else None,
                self._now(),
            )

        self.runner = PolicyRunner(
            self.policy.infer,
            self.buffer,
            self._publish_chunk,
            self._now,
            p["instruction"],
            warmup,
            runner_settings,
            log=lambda text: self.get_logger().warning(text),
            after_warmup=self.policy.reset,
        )
        self.runner.paused = not p["enabled"]
        self.runner.start()
        self.get_logger().info(
            f"policy up: checkpoint={checkpoint} head={cfg.head} device={p['device']} "
            f"dtype={p['dtype']} cameras={[c.topic for c in self.cameras]} "
            f"chunk={self.chunk_length} x {self.period_s:.3f} s; warming up"
        )

    def _camera_specs(self, spec_type) -> list:
        p = self.p
        topics, kinds, roles = p["cameras.topics"], p["cameras.kinds"], p["cameras.roles"]
        widths, heights = p["cameras.widths"], p["cameras.heights"]
        n = len(topics)
        if not 1 <= n <= 2:
            raise ConfigError(f"cameras.topics must name 1 or 2 cameras, got {n}")
        for key, values in (("cameras.kinds", kinds), ("cameras.roles", roles)):
            if len(values) != n:
                raise ConfigError(f"{key} has {len(values)} entries for {n} camera topics")
        sizes = []
        for key, values in (("cameras.widths", widths), ("cameras.heights", heights)):
            if not any(values):  # all 0 (the default): any size, for every camera
                values = [0] * n
            if len(values) != n:
                raise ConfigError(f"{key} has {len(values)} entries for {n} camera topics")
            sizes.append(list(values))
        widths, heights = sizes
        try:
            return [
                spec_type(r, t, k, w, h)
                for t, k, r, w, h in zip(topics, kinds, roles, widths, heights)
            ]
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    def _checkpoint_dir(self) -> Path:
        from dream_vla_ros.policy.random_checkpoint import write_random_checkpoint

        p = self.p
        if p["model.checkpoint"]:
            return Path(p["model.checkpoint"]).expanduser()
        if not p["model.allow_random_weights"]:
            raise ConfigError(
                "model.checkpoint is empty; give a checkpoint directory, or set "
                "model.allow_random_weights:=true to run random weights (simulation only)"
            )
        self._tmp = tempfile.TemporaryDirectory(prefix="dream_vla_random_")
        self.get_logger().warning(
            f"RANDOM WEIGHTS: preset {p['model.preset']}, head {p['model.head']}, seed "
            f"{p['model.seed']}; its actions are meaningless (confined to a box near home)"
        )
        try:
            return write_random_checkpoint(
                Path(self._tmp.name) / "model",
                p["model.preset"],
                seed=p["model.seed"],
                action_box=DEMO_BOX,
                head=p["model.head"],
            )
        except ValueError as exc:
            raise ConfigError(f"random weights: {exc}") from None

    # -- callbacks (never block) ----------------------------------------------------------
    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _on_image(self, cam, msg) -> None:
        # only the stamp is read here; a bad image is refused, with its reason on
        # /diagnostics, when the inference thread decodes it (ObservationBuffer)
        self.buffer.add_frame(cam.role, image_frame(msg, cam.kind, self._now()))

    def _on_joint_state(self, msg: JointState) -> None:
        problem = self.buffer.add_joint_state(time_to_sec(msg.header.stamp), msg.name, msg.position)
        if problem:
            self.guard.refuse(self._joint_topic, problem)

    def _on_instruction(self, msg: String) -> None:
        try:
            self.runner.set_instruction(msg.data)
        except ValueError as exc:
            self.guard.refuse("~/instruction", str(exc))
            return
        self.policy.reset()
        self.get_logger().info(f"instruction: '{self.runner.instruction}'")

    def _on_set_parameters(self, params) -> SetParametersResult:
        for param in params:
            if param.name == "debug.inference_delay_s":
                self.runner.extra_delay_s = float(param.value)
            elif param.name == "enabled":
                if param.value and self.runner.paused:
                    self.policy.reset()  # a new episode: fresh sampler, fresh frames
                    self.buffer.clear()
                self.runner.paused = not param.value
        return SetParametersResult(successful=True)

    def _srv_reset(self, _request, response):
        self.runner.supersede()
        self.policy.reset()
        self.buffer.clear()
        response.success = True
        response.message = "policy reset: sampler reseeded, waiting for fresh observations"
        return response

    # -- output -------------------------------------------------------------------------------
    def _publish_chunk(self, chunk) -> None:
        if not self.context.ok():  # shutting down: the publisher is gone
            return
        actions = chunk.actions[: self.chunk_length]
        self.pub_chunk.publish(chunk_message(chunk.stamp_s, JOINT_NAMES, actions, self.period_s))

    def _publish_diagnostics(self) -> None:
        runner = self.runner
        if runner.fatal is not None:
            level, message = DiagnosticStatus.ERROR, runner.problem
        elif not runner.ready:
            level, message = DiagnosticStatus.WARN, "warming up"
        elif runner.problem:
            level, message = DiagnosticStatus.WARN, runner.problem
        elif self.guard.warning():
            level, message = DiagnosticStatus.WARN, self.guard.warning()
        else:
            level, message = DiagnosticStatus.OK, "publishing chunks"
        status = DiagnosticStatus(
            level=level, name="dream_vla/policy", hardware_id=self.p["device"], message=message
        )
        values = {**runner.summary(), **self.guard.summary()}
        values["views"] = str(self.policy.settings.views)
        status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = self.get_clock().now().to_msg()
        self.pub_diag.publish(msg)

    def shutdown(self) -> None:
        self.runner.stop()
        if self._tmp is not None:
            self._tmp.cleanup()


def main(args: list[str] | None = None) -> None:
    # One thread for every callback (they only store): a MultiThreadedExecutor's spin
    # thread busy-loops in this rclpy and starved inference 3x (docs/policy_node.md).
    run_node(
        "policy",
        PolicyNode,
        SingleThreadedExecutor,
        (ConfigError, ValueError, RuntimeError, OSError),
        args,
    )


if __name__ == "__main__":
    main()
