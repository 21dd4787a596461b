"""The node graphs, defined once (no ROS imports).

`launch/sim.launch.py` and `launch/bringup.launch.py` turn these descriptions
into launch_ros actions under a real ROS 2 install; `dream-vla launch NAME
[arg:=value ...]` (dream_vla_ros.launcher) turns the same descriptions into one
process per node on machines without `ros2 launch`. Which nodes run, which
parameter files they read and which launch arguments set which parameters is
only written here.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass

from dream_vla_ros.paths import config_path

PACKAGE = "dream_vla_ros"
TYPES = ("str", "float", "int", "bool", "str_list")


class LaunchError(ValueError):
    """Bad launch arguments; the message names the argument and what is allowed."""


@dataclass(frozen=True)
class Argument:
    name: str
    default: str
    description: str
    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class Override:
    """`parameter` := `template` with {argument} references, typed for the parameter."""

    parameter: str
    template: str | tuple[str, ...]  # a tuple is a list parameter, one template per element
    type: str = "str"

    def __post_init__(self) -> None:
        if self.type not in TYPES:
            raise ValueError(f"override type must be one of {TYPES}")


@dataclass(frozen=True)
class NodeSpec:
    name: str
    module: str  # python -m MODULE (the launcher)
    executable: str  # console script (ros2 launch)
    params_files: tuple[str, ...]  # under config/
    overrides: tuple[Override, ...] = ()
    # CPU niceness: the controller's 200 Hz loop keeps priority over model and
    # rendering work when they share cores (launch_ros: prefix "nice -n N")
    nice: int = 0


@dataclass(frozen=True)
class Graph:
    name: str
    description: str
    arguments: tuple[Argument, ...]
    nodes: tuple[NodeSpec, ...]

    def argument(self, name: str) -> Argument:
        for arg in self.arguments:
            if arg.name == name:
                return arg
        raise KeyError(name)


def _ros_node(
    name: str, params_files: tuple[str, ...], overrides: tuple[Override, ...], nice: int = 0
) -> NodeSpec:
    """A node of this package: module dream_vla_ros.ros.NAME_node, console script NAME_node."""
    return NodeSpec(
        name, f"dream_vla_ros.ros.{name}_node", f"{name}_node", params_files, overrides, nice
    )


def _common(device: str, dtype: str) -> tuple[Argument, ...]:
    return (
        Argument("instruction", "pick up the red cube", "Task instruction for the policy"),
        Argument("device", device, "Torch device of the policy: cpu, cuda, cuda:N"),
        Argument("dtype", dtype, "Model dtype", ("fp32", "bf16", "fp16")),
        Argument("inference_delay_s", "0.0", "Test hook: extra policy delay before publishing [s]"),
    )


_POLICY_MODEL = (
    Override("model.checkpoint", "{checkpoint}"),
    Override("device", "{device}"),
    Override("dtype", "{dtype}"),
    Override("instruction", "{instruction}"),
    Override("debug.inference_delay_s", "{inference_delay_s}", "float"),
)


def _simulated_policy_args(head: str) -> tuple[Argument, ...]:
    """Arguments of a simulated graph's policy: a checkpoint or random weights."""
    return (
        Argument("checkpoint", "", "Checkpoint directory; empty: random weights of `preset`"),
        Argument("preset", "tiny", "Preset of the random-weights model"),
        Argument("head", head, "Head of the random-weights model", ("discrete", "flow", "l1")),
        *_common("cpu", "fp32"),
        Argument("can_name", "sim0", "Virtual CAN channel of the simulator"),
    )


def _camera_args(width: int, height: int) -> tuple[Argument, ...]:
    return (
        Argument("camera_rate_hz", "10.0", "Frames per second per camera"),
        Argument("camera_width", str(width), "Camera width [px]"),
        Argument("camera_height", str(height), "Camera height [px]"),
    )


SIM = Graph(
    name="sim",
    description="Simulated PiPER (CAN-level firmware simulator), schematic cameras, policy, "
    "controller; needs no arm, no GPU and no downloaded weights",
    arguments=(
        *_simulated_policy_args("l1"),
        Argument("camera_format", "raw", "Camera messages", ("raw", "compressed")),
        *_camera_args(640, 480),
    ),
    nodes=(
        _ros_node(
            "controller",
            ("controller.yaml",),
            (
                Override("arm.backend", "sim"),
                Override("arm.can_name", "{can_name}"),
                Override("auto_enable", "true", "bool"),
                # The simulated arm's feedback comes from a thread of this process: a
                # gap measures host stalls (a shared 2-core VM stalls for up to ~1 s under
                # load: measured 830 ms), not a bus fault. Real arm: 0.1 s.
                Override("arm.feedback_timeout_s", "1.0", "float"),
                # Likewise a stalled simulator thread lags its commands (real arm: 0.15).
                Override("sim.max_tracking_error_rad", "0.5", "float"),
                # Every subscriber (policy, cameras, recorder, evaluation driver) is a
                # Python process on the same 2 cores; at 200 Hz their callbacks took the
                # CPU and the GIL from the policy's inference (docs/sim.md). The control
                # loop stays at 200 Hz; the real arm's graph keeps 200 Hz.
                Override("joint_state_rate_hz", "50.0", "float"),
            ),
        ),
        _ros_node(
            "sim_camera",
            ("sim_camera.yaml",),
            (
                Override("format", "{camera_format}"),
                Override("rate_hz", "{camera_rate_hz}", "float"),
                Override("width", "{camera_width}", "int"),
                Override("height", "{camera_height}", "int"),
            ),
            nice=5,
        ),
        _ros_node(
            "policy",
            ("policy.yaml", "policy_sim.yaml"),
            (
                *_POLICY_MODEL,
                Override("model.preset", "{preset}"),
                Override("model.head", "{head}"),
                Override("cameras.kinds", ("{camera_format}", "{camera_format}"), "str_list"),
            ),
            nice=10,
        ),
    ),
)

BRINGUP = Graph(
    name="bringup",
    description="Real PiPER on socketcan: controller (arm.backend piper) and policy; "
    "cameras come from your camera drivers",
    arguments=(
        Argument(
            "checkpoint", "", "Checkpoint directory (required: no random weights on a real arm)"
        ),
        *_common("cuda", "bf16"),
        Argument("can_name", "can0", "CAN interface of the PiPER"),
        Argument("front_topic", "/camera/front/image_raw", "Front (third-person) camera topic"),
        Argument("wrist_topic", "/camera/wrist/image_raw", "Wrist camera topic"),
        Argument("camera_kind", "raw", "Camera messages", ("raw", "compressed")),
        Argument("auto_enable", "false", "Enable the arm at start-up", ("true", "false")),
    ),
    nodes=(
        _ros_node(
            "controller",
            ("controller.yaml",),
            (
                Override("arm.backend", "piper"),
                Override("arm.can_name", "{can_name}"),
                Override("auto_enable", "{auto_enable}", "bool"),
            ),
        ),
        _ros_node(
            "policy",
            ("policy.yaml",),
            (
                *_POLICY_MODEL,
                Override("cameras.topics", ("{front_topic}", "{wrist_topic}"), "str_list"),
                Override("cameras.kinds", ("{camera_kind}", "{camera_kind}"), "str_list"),
                Override("cameras.roles", ("front", "wrist"), "str_list"),
            ),
            nice=10,
        ),
    ),
)

_RECORDER = _ros_node(
    "recorder",
    ("recorder.yaml",),
    (Override("output_dir", "{output_dir}"), Override("instruction", "{instruction}")),
)

COLLECT = Graph(
    name="collect",
    description="Demonstrations in simulation: simulated PiPER, schematic cameras, scripted "
    "teleop, recorder (episodes start/stop with the recorder's ~/start and ~/stop)",
    arguments=(
        Argument("output_dir", "episodes", "Folder of the recorded episodes"),
        Argument("instruction", "pick up the red cube", "Instruction stored with each episode"),
        Argument("seed", "0", "Seed of the scripted teleop"),
        Argument("can_name", "sim0", "Virtual CAN channel of the simulator"),
        Argument("camera_format", "raw", "Camera messages", ("raw", "compressed")),
        *_camera_args(640, 480),
    ),
    nodes=(
        SIM.nodes[0],  # the simulated controller, exactly as in `sim`
        SIM.nodes[1],  # the schematic cameras
        _ros_node(
            "teleop",
            ("teleop.yaml",),
            (Override("source", "scripted"), Override("scripted.seed", "{seed}", "int")),
        ),
        _RECORDER,
    ),
)

COLLECT_PIPER = Graph(
    name="collect_piper",
    description="Demonstrations on a real PiPER: leader arm -> teleop -> controller (follower, "
    "safety-limited) and the recorder; cameras come from your camera drivers",
    arguments=(
        Argument("output_dir", "episodes", "Folder of the recorded episodes"),
        Argument("instruction", "pick up the red cube", "Instruction stored with each episode"),
        Argument("can_name", "can0", "CAN interface of the follower PiPER"),
        Argument("leader_can_name", "can_leader", "CAN interface of the leader PiPER"),
        Argument("auto_enable", "false", "Enable the follower at start-up", ("true", "false")),
    ),
    nodes=(
        BRINGUP.nodes[0],  # the real controller, exactly as in `bringup`
        _ros_node(
            "teleop",
            ("teleop.yaml",),
            (
                Override("source", "piper_leader"),
                Override("leader.can_name", "{leader_can_name}"),
                Override("leader.bustype", "socketcan"),
            ),
        ),
        _RECORDER,
    ),
)

_SIM_WORLD = _ros_node(
    "sim_world",
    ("sim_world.yaml",),
    (
        Override("task.seed", "{task_seed}", "int"),
        Override("rate_hz", "{camera_rate_hz}", "float"),
        Override("width", "{camera_width}", "int"),
        Override("height", "{camera_height}", "int"),
    ),
    nice=5,
)

COLLECT_WORLD = Graph(
    name="collect_world",
    description="Touch-the-cube demonstrations in the MuJoCo world: simulated PiPER, sim_world "
    "cameras, the scripted expert (teleop source touch_expert, layout = task.seed on sim_world "
    "and teleop), recorder",
    arguments=(
        Argument("output_dir", "episodes", "Folder of the recorded episodes"),
        Argument("instruction", "touch the red cube", "Instruction stored with each episode"),
        Argument("task_seed", "0", "Initial layout seed (sim_world)"),
        Argument("can_name", "sim0", "Virtual CAN channel of the simulator"),
        *_camera_args(320, 240),
    ),
    nodes=(
        SIM.nodes[0],  # the simulated controller, exactly as in `sim`
        _SIM_WORLD,
        _ros_node("teleop", ("teleop.yaml",), (Override("source", "touch_expert"),)),
        _RECORDER,
    ),
)

SIM_WORLD = Graph(
    name="sim_world",
    description="The MuJoCo world (touch the cube): simulated PiPER, sim_world cameras, policy, "
    "controller; layout = sim_world task.seed, instruction = the policy's",
    arguments=(
        *_simulated_policy_args("flow"),
        Argument("task_seed", "0", "Layout seed (sim_world)"),
        Argument("policy_enabled", "true", "Policy publishes chunks at start", ("true", "false")),
        *_camera_args(320, 240),
    ),
    nodes=(
        SIM.nodes[0],  # the simulated controller, exactly as in `sim`
        _SIM_WORLD,
        _ros_node(
            "policy",
            ("policy.yaml", "policy_sim.yaml"),
            (
                *_POLICY_MODEL,
                Override("model.preset", "{preset}"),
                Override("model.head", "{head}"),
                Override("enabled", "{policy_enabled}", "bool"),
            ),
            nice=10,
        ),
    ),
)

GRAPHS = {g.name: g for g in (SIM, BRINGUP, COLLECT, COLLECT_PIPER, COLLECT_WORLD, SIM_WORLD)}
REQUIRED = {("bringup", "checkpoint")}


def graph(name: str) -> Graph:
    if name not in GRAPHS:
        raise LaunchError(f"unknown graph '{name}'; choose one of {sorted(GRAPHS)}")
    return GRAPHS[name]


def parse_arguments(g: Graph, argv: list[str]) -> dict[str, str]:
    """`name:=value` words -> every argument's value (defaults filled in), validated."""
    values = {a.name: a.default for a in g.arguments}
    for word in argv:
        name, sep, value = word.partition(":=")
        if not sep:
            raise LaunchError(f"'{word}' is not name:=value")
        if name not in values:
            raise LaunchError(
                f"'{name}' is not an argument of '{g.name}'; arguments: {', '.join(values)}"
            )
        arg = g.argument(name)
        if arg.choices and value not in arg.choices:
            raise LaunchError(f"{name}:={value} is not one of {', '.join(arg.choices)}")
        values[name] = value
    for graph_name, name in REQUIRED:
        if graph_name == g.name and not values[name]:
            raise LaunchError(f"'{g.name}' needs {name}:=VALUE")
    return values


_REF = re.compile(r"\{([a-z_]+)\}")


def split_template(template: str) -> list[tuple[bool, str]]:
    """'{a}/x' -> [(True, 'a'), (False, '/x')]: argument references and literal text."""
    parts: list[tuple[bool, str]] = []
    pos = 0
    for match in _REF.finditer(template):
        if match.start() > pos:
            parts.append((False, template[pos : match.start()]))
        parts.append((True, match.group(1)))
        pos = match.end()
    if pos < len(template):
        parts.append((False, template[pos:]))
    return parts


def _fill(template: str, values: dict[str, str]) -> str:
    return "".join(values[text] if ref else text for ref, text in split_template(template))


def _yaml_str(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def parameter_value(override: Override, values: dict[str, str]) -> str:
    """The `-p name:=VALUE` text (YAML, as rcl parses it) of an override."""
    if isinstance(override.template, tuple):
        return "[" + ", ".join(_yaml_str(_fill(t, values)) for t in override.template) + "]"
    text = _fill(override.template, values)
    if override.type == "str":
        return _yaml_str(text)
    try:
        if override.type == "float":
            return repr(float(text))
        if override.type == "int":
            return str(int(text))
    except ValueError:
        kind = "an integer" if override.type == "int" else "a number"
        raise LaunchError(f"{override.parameter} needs {kind}, got '{text}'") from None
    if override.type == "bool":
        if text.lower() not in ("true", "false"):
            raise LaunchError(f"{override.parameter} needs true or false, got '{text}'")
        return text.lower()
    raise LaunchError(f"{override.parameter}: unsupported type {override.type}")


def node_command(node: NodeSpec, values: dict[str, str], python: str | None = None) -> list[str]:
    """The command line that runs `node` with its parameter files and overrides."""
    cmd = [
        python or sys.executable,
        "-u",
        "-m",
        node.module,
        "--ros-args",
        "-r",
        f"__node:={node.name}",
    ]
    for name in node.params_files:
        cmd += ["--params-file", str(config_path(name))]
    for override in node.overrides:
        cmd += ["-p", f"{override.parameter}:={parameter_value(override, values)}"]
    return cmd
