"""Node graphs: their types and templating (spec.py) and the graphs (definitions.py)."""

from dream_vla_ros.graphs.definitions import (
    BRINGUP,
    COLLECT,
    COLLECT_PIPER,
    COLLECT_WORLD,
    GRAPHS,
    SIM,
    SIM_WORLD,
    graph,
)
from dream_vla_ros.graphs.spec import (
    PACKAGE,
    Argument,
    Graph,
    LaunchError,
    NodeSpec,
    Override,
    node_command,
    node_parameters,
    override_value,
    parameter_value,
    parse_arguments,
    split_template,
)

__all__ = [
    "BRINGUP",
    "COLLECT",
    "COLLECT_PIPER",
    "COLLECT_WORLD",
    "GRAPHS",
    "PACKAGE",
    "SIM",
    "SIM_WORLD",
    "Argument",
    "Graph",
    "LaunchError",
    "NodeSpec",
    "Override",
    "graph",
    "node_command",
    "node_parameters",
    "override_value",
    "parameter_value",
    "parse_arguments",
    "split_template",
]
