"""For launch/*.launch.py: a dream_vla_ros.graphs Graph as launch_ros actions
(ROS 2 install with `ros2 launch` only).

The graph itself (nodes, parameter files, which argument sets which parameter)
is defined once in dream_vla_ros/graphs/definitions.py; `dream-vla launch` runs
the same graph without ros2 launch.
"""

from launch.actions import DeclareLaunchArgument, SetEnvironmentVariable
from launch.substitutions import LaunchConfiguration, TextSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

from dream_vla_ros.dds import local_dds_env
from dream_vla_ros.graphs import PACKAGE, graph, split_template
from dream_vla_ros.paths import config_path
from launch import LaunchDescription

_VALUE_TYPES = {"str": str, "float": float, "int": int, "bool": bool}


def _substitutions(template):
    return [
        LaunchConfiguration(text) if is_ref else TextSubstitution(text=text)
        for is_ref, text in split_template(template)
    ]


def _parameter(override):
    if isinstance(override.template, tuple):  # a list of strings, one template per element
        return [_substitutions(t) for t in override.template]
    return ParameterValue(_substitutions(override.template), value_type=_VALUE_TYPES[override.type])


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
                choices=list(arg.choices) or None,
                **({} if arg.required else {"default_value": arg.default}),
            )
        )
    for node in g.nodes:
        params = [str(config_path(f)) for f in node.params_files]
        params.append({o.parameter: _parameter(o) for o in node.overrides})
        actions.append(
            Node(
                package=PACKAGE,
                executable=node.executable,
                name=node.name,
                parameters=params,
                output="screen",
                prefix=f"nice -n {node.nice}" if node.nice else None,
            )
        )
    return LaunchDescription(actions)
