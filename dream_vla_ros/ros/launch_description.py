"""For launch/*.launch.py: a dream_vla_ros.graphs Graph as launch_ros actions
(ROS 2 install with `ros2 launch` only).

The graph itself (nodes, parameter files, which argument sets which parameter)
is defined once in dream_vla_ros/graphs/definitions.py; `dream-vla launch` runs
the same graph without ros2 launch. Each node is built when the launch arguments
are known (an OpaqueFunction), with the same templating as `dream-vla launch`
(graphs/spec.py), so an argument left empty leaves the node's own parameter.

Supervision as ros2 launch can express it: the critical node (the controller)
shuts the launch down when it exits; a node marked `restart` respawns after 2 s,
at most 5 times (launch has no growing back-off); any other node that exits stays
down while the rest of the graph runs on (ros2 launch's own default). A respawned
node takes its DDS participant id automatically, unlike under `dream-vla launch`
(see dream_vla_ros.dds: after a SIGKILL it can reuse the dead node's port).
"""

from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable, Shutdown
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from dream_vla_ros.dds import local_dds_env
from dream_vla_ros.graphs import PACKAGE, graph, node_parameters
from dream_vla_ros.paths import config_path
from launch import LaunchDescription


def _node_action(g, node):
    def build(context):
        values = {a.name: LaunchConfiguration(a.name).perform(context) for a in g.arguments}
        for arg in g.arguments:
            if arg.required and not values[arg.name]:
                raise RuntimeError(f"'{g.name}' needs {arg.name}:=VALUE")
        params = [str(config_path(f)) for f in node.params_files]
        params.append(node_parameters(node, values))
        supervision = {}
        if node.critical:
            supervision["on_exit"] = [Shutdown(reason=f"the critical node '{node.name}' exited")]
        elif node.restart:
            supervision.update(respawn=True, respawn_delay=2.0, respawn_max_retries=5)
        return [
            Node(
                package=PACKAGE,
                executable=node.executable,
                name=node.name,
                parameters=params,
                output="screen",
                prefix=f"nice -n {node.nice}" if node.nice else None,
                **supervision,
            )
        ]

    return OpaqueFunction(function=build)


def describe(name):
    g = graph(name)
    actions = []
    # the project's DDS settings (localhost only unless DREAM_VLA_DDS=system)
    env = local_dds_env()
    for key in ("FASTDDS_DEFAULT_PROFILES_FILE", "ROS_AUTOMATIC_DISCOVERY_RANGE"):
        if key in env:
            actions.append(SetEnvironmentVariable(key, env[key]))
    for arg in g.arguments:
        actions.append(
            DeclareLaunchArgument(
                arg.name,
                description=arg.description,
                # an empty default ("the node's own value") is a valid choice too
                choices=[*arg.choices, ""]
                if arg.choices and not arg.default
                else (list(arg.choices) or None),
                **({} if arg.required else {"default_value": arg.default}),
            )
        )
    actions.extend(_node_action(g, node) for node in g.nodes)
    return LaunchDescription(actions)
