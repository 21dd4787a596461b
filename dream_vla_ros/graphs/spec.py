"""The types of a node graph and how a graph's launch arguments become node
parameters (no ROS imports): `Graph`, `NodeSpec`, `Argument`, `Override`, argument
parsing and templating, and the command line of a node. The graphs themselves are
in graphs/definitions.py."""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from typing import Any

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
    required: bool = False  # a value must be given (no default stands)


@dataclass(frozen=True)
class Override:
    """`parameter` := `template` with {argument} references, typed for the parameter."""

    parameter: str
    template: str | tuple[str, ...]  # a tuple is a list parameter, one template per element
    type: str = "str"
    # only when the filled value is not empty: an argument whose default is "" then
    # leaves the node's own parameter (its table or its parameter file) in force
    if_given: bool = False

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
    # Supervision (launcher.py): when a critical node ends the graph stops; another
    # node that ends is restarted with a back-off when `restart`, else left down.
    critical: bool = False
    restart: bool = False


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

    def node(self, name: str) -> NodeSpec:
        """The node called `name` (another graph reuses it by name)."""
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(f"graph '{self.name}' has no node '{name}'")


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
    for arg in g.arguments:
        if arg.required and not values[arg.name]:
            raise LaunchError(f"'{g.name}' needs {arg.name}:=VALUE")
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


def override_value(override: Override, values: dict[str, str]) -> Any:
    """The typed value (str, float, int, bool, list[str]) an override gives its
    parameter, or None when an `if_given` override's argument is empty."""
    if isinstance(override.template, tuple):
        return [_fill(t, values) for t in override.template]
    text = _fill(override.template, values)
    if override.if_given and not text:
        return None
    if override.type == "str":
        return text
    try:
        if override.type == "float":
            return float(text)
        if override.type == "int":
            return int(text)
    except ValueError:
        kind = "an integer" if override.type == "int" else "a number"
        raise LaunchError(f"{override.parameter} needs {kind}, got '{text}'") from None
    if override.type == "bool":
        if text.lower() not in ("true", "false"):
            raise LaunchError(f"{override.parameter} needs true or false, got '{text}'")
        return text.lower() == "true"
    raise LaunchError(f"{override.parameter}: unsupported type {override.type}")


def parameter_value(override: Override, values: dict[str, str]) -> str | None:
    """The `-p name:=VALUE` text (YAML, as rcl parses it) of an override; None when
    the override does not apply."""
    value = override_value(override, values)
    if value is None:
        return None
    if isinstance(value, list):
        return "[" + ", ".join(_yaml_str(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return _yaml_str(value)
    return repr(value)


def node_parameters(node: NodeSpec, values: dict[str, str]) -> dict[str, Any]:
    """{parameter: typed value} of the node's overrides that apply (ros2 launch)."""
    out = {}
    for override in node.overrides:
        value = override_value(override, values)
        if value is not None:
            out[override.parameter] = value
    return out


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
        text = parameter_value(override, values)
        if text is not None:
            cmd += ["-p", f"{override.parameter}:={text}"]
    return cmd
