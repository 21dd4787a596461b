"""The node graphs, defined once (no ROS imports).

`launch/*.launch.py` turn these descriptions into launch_ros actions under a real
ROS 2 install; `dream-vla launch NAME [arg:=value ...]` (dream_vla_ros.launcher)
turns the same descriptions into one process per node on machines without
`ros2 launch`. Which nodes run, which parameter files they read and which launch
arguments set which parameters is only written here. A graph that reuses another
graph's node names it (`SIM.node("controller")`), so both run the same node.
"""

from __future__ import annotations

import dataclasses

from dream_vla_ros.graphs.spec import Argument, Graph, LaunchError, NodeSpec, Override

# Supervision, the same in every graph: the controller owns the arm and is critical
# (the graph stops with it); cameras and the recorder are restarted (the recorder
# recovers its open episode); the policy is restarted in simulation only (on a real
# arm a restarted policy would move the arm again with nobody asking); teleop is left
# down (a motion source that restarts by itself would surprise its operator).
_RESTARTED = {"sim_camera", "sim_world", "recorder"}


def _ros_node(
    name: str,
    params_files: tuple[str, ...],
    overrides: tuple[Override, ...],
    nice: int = 0,
    restart: bool | None = None,
) -> NodeSpec:
    """A node of this package: module dream_vla_ros.ros.NAME_node, console script NAME_node."""
    return NodeSpec(
        name,
        f"dream_vla_ros.ros.{name}_node",
        f"{name}_node",
        params_files,
        overrides,
        nice,
        critical=name == "controller",
        restart=name in _RESTARTED if restart is None else restart,
    )


# An argument whose default is "" leaves the node's own value (its parameter table
# or its parameter file in config/): the defaults are written once, there.
_KEEP = "(empty: the node's parameter file)"


def _common() -> tuple[Argument, ...]:
    return (
        Argument("instruction", "", f"Task instruction for the policy {_KEEP}"),
        Argument("device", "", f"Torch device of the policy: cpu, cuda, cuda:N {_KEEP}"),
        Argument("dtype", "", f"Model dtype {_KEEP}", ("fp32", "bf16", "fp16")),
        Argument("unnorm_key", "", "Dataset statistics of an official checkpoint with several"),
        Argument("inference_delay_s", "0.0", "Test hook: extra policy delay before publishing [s]"),
    )


_POLICY_MODEL = (
    Override("model.checkpoint", "{checkpoint}"),
    Override("device", "{device}", if_given=True),
    Override("dtype", "{dtype}", if_given=True),
    Override("model.unnorm_key", "{unnorm_key}", if_given=True),
    Override("instruction", "{instruction}", if_given=True),
    Override("debug.inference_delay_s", "{inference_delay_s}", "float"),
)


def _simulated_policy_args(head: str) -> tuple[Argument, ...]:
    """Arguments of a simulated graph's policy: a checkpoint or random weights."""
    return (
        Argument("checkpoint", "", "Checkpoint directory; empty: random weights of `preset`"),
        Argument("preset", "tiny", "Preset of the random-weights model"),
        Argument("head", head, "Head of the random-weights model", ("discrete", "flow", "l1")),
        *_common(),
        Argument("can_name", "sim0", "Virtual CAN channel of the simulator"),
    )


def _camera_args() -> tuple[Argument, ...]:
    return (
        Argument("camera_rate_hz", "", f"Frames per second per camera {_KEEP}"),
        Argument("camera_width", "", f"Camera width [px] {_KEEP}"),
        Argument("camera_height", "", f"Camera height [px] {_KEEP}"),
    )


SIM = Graph(
    name="sim",
    description="Simulated PiPER (CAN-level firmware simulator), schematic cameras, policy, "
    "controller; needs no arm, no GPU and no downloaded weights",
    arguments=(
        *_simulated_policy_args("l1"),
        Argument("camera_format", "raw", "Camera messages", ("raw", "compressed")),
        *_camera_args(),
    ),
    nodes=(
        _ros_node(
            "controller",
            (),  # the node's defaults; config/controller.yaml is the real arm's
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
            (),
            (
                Override("format", "{camera_format}"),
                Override("rate_hz", "{camera_rate_hz}", "float", if_given=True),
                Override("width", "{camera_width}", "int", if_given=True),
                Override("height", "{camera_height}", "int", if_given=True),
            ),
            nice=5,
        ),
        _ros_node(
            "policy",
            ("policy_sim.yaml",),
            (
                *_POLICY_MODEL,
                Override("model.preset", "{preset}"),
                Override("model.head", "{head}"),
                Override("cameras.kinds", ("{camera_format}", "{camera_format}"), "str_list"),
            ),
            nice=10,
            restart=True,  # simulation: a restarted policy moves a simulated arm
        ),
    ),
)

BRINGUP = Graph(
    name="bringup",
    description="Real PiPER on socketcan: controller (arm.backend piper) and policy; "
    "cameras come from your camera drivers",
    arguments=(
        Argument(
            "checkpoint",
            "",
            "Checkpoint directory (required: no random weights on a real arm)",
            required=True,
        ),
        *_common(),
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
    (),
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
        *_camera_args(),
    ),
    nodes=(
        SIM.node("controller"),  # exactly as in `sim`
        SIM.node("sim_camera"),
        _ros_node(
            "teleop",
            (),
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
        BRINGUP.node("controller"),  # exactly as in `bringup`
        _ros_node(
            "teleop",
            (),
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
        Override("task.kind", "{task}"),
        Override("task.seed", "{task_seed}", "int"),
        Override("camera.front_offset", "{camera_offset}", if_given=True),
        Override("rate_hz", "{camera_rate_hz}", "float", if_given=True),
        Override("width", "{camera_width}", "int", if_given=True),
        Override("height", "{camera_height}", "int", if_given=True),
    ),
    nice=5,
)

# The world graphs' controller: `sim`'s, whose simulated gripper also stalls on the
# cube that the physics world reports between the fingers (the place task).
_WORLD_CONTROLLER = dataclasses.replace(
    SIM.node("controller"),
    overrides=(
        *SIM.node("controller").overrides,
        Override("sim.gripper_contact_topic", "/sim_world/gripper_contact"),
    ),
)


def _world_args() -> tuple[Argument, ...]:
    return (
        Argument("task", "touch", "The world's task", ("touch", "place")),
        Argument(
            "camera_offset",
            "",
            "Front camera offset dx,dy,dz,roll,pitch,yaw (m, deg); empty: nominal",
        ),
    )


COLLECT_WORLD = Graph(
    name="collect_world",
    description="Demonstrations in the MuJoCo world: simulated PiPER, sim_world cameras, the "
    "scripted expert of the task (teleop source touch_expert or place_expert, layout = "
    "task.seed on sim_world and teleop), recorder",
    arguments=(
        Argument("output_dir", "episodes", "Folder of the recorded episodes"),
        Argument("instruction", "touch the red cube", "Instruction stored with each episode"),
        Argument("task_seed", "0", "Initial layout seed (sim_world)"),
        Argument("can_name", "sim0", "Virtual CAN channel of the simulator"),
        *_world_args(),
        *_camera_args(),
    ),
    nodes=(
        _WORLD_CONTROLLER,
        _SIM_WORLD,
        _ros_node("teleop", (), (Override("source", "{task}_expert"),)),
        _RECORDER,
    ),
)

SIM_WORLD = Graph(
    name="sim_world",
    description="The MuJoCo world (touch the cube, or put a cube in a bowl): simulated PiPER, "
    "sim_world cameras, policy, controller; layout = sim_world task.seed, instruction = the "
    "policy's",
    arguments=(
        *_simulated_policy_args("flow"),
        Argument("task_seed", "0", "Layout seed (sim_world)"),
        Argument("policy_enabled", "true", "Policy publishes chunks at start", ("true", "false")),
        Argument("chunk_views", "", f"The policy's views (test-time augmentation) {_KEEP}"),
        *_world_args(),
        *_camera_args(),
    ),
    nodes=(
        _WORLD_CONTROLLER,
        _SIM_WORLD,
        _ros_node(
            "policy",
            ("policy_sim.yaml",),
            (
                *_POLICY_MODEL,
                Override("model.preset", "{preset}"),
                Override("model.head", "{head}"),
                Override("enabled", "{policy_enabled}", "bool"),
                Override("chunk_views", "{chunk_views}", "int", if_given=True),
            ),
            nice=10,
            restart=True,  # simulation: a restarted policy moves a simulated arm
        ),
    ),
)

GRAPHS = {g.name: g for g in (SIM, BRINGUP, COLLECT, COLLECT_PIPER, COLLECT_WORLD, SIM_WORLD)}


def graph(name: str) -> Graph:
    """The graph called `name`; LaunchError lists the graphs otherwise."""
    if name not in GRAPHS:
        raise LaunchError(f"unknown graph '{name}'; choose one of {sorted(GRAPHS)}")
    return GRAPHS[name]
