"""Node parameters: each declared once, in its node's table (ros/parameters.py); the
YAML files in config/ hold only what one use changes, and every graph override
names a declared parameter with its type."""

from __future__ import annotations

import importlib

import pytest
import yaml

from dream_vla_ros.graphs import GRAPHS
from dream_vla_ros.paths import config_path
from dream_vla_ros.ros.parameters import Param

NODE_MODULES = {
    "controller": ("dream_vla_ros.ros.controller_node", "PARAMETERS"),
    "policy": ("dream_vla_ros.ros.policy_node", "PARAMETERS"),
    "recorder": ("dream_vla_ros.ros.recorder_node", "PARAMETERS"),
    "teleop": ("dream_vla_ros.ros.teleop_node", "PARAMETERS"),
    "sim_camera": ("dream_vla_ros.ros.sim_camera_node", "SimCameraNode.PARAMETERS"),
    "sim_world": ("dream_vla_ros.ros.sim_world_node", "SimWorldNode.PARAMETERS"),
}
NODE_FILES = ("controller.yaml", "policy.yaml", "policy_sim.yaml", "sim_world.yaml")


def _table(node: str) -> dict[str, Param]:
    module_name, attr = NODE_MODULES[node]
    obj = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return {p.name: p for p in obj}


def _type(value) -> str:
    if isinstance(value, list):
        return f"{type(value[0]).__name__}_list"
    return type(value).__name__


@pytest.mark.parametrize("node", sorted(NODE_MODULES))
def test_every_parameter_is_declared_once_with_a_description_and_a_valid_default(node):
    module_name, attr = NODE_MODULES[node]
    obj = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    names = [p.name for p in obj]
    assert len(names) == len(set(names)), f"{node}: declared twice"
    for p in obj:
        assert p.description.strip(), f"{node}.{p.name} has no description"
        if p.range is not None:
            lo, hi = p.range
            assert lo <= p.default <= hi, f"{node}.{p.name}: default {p.default} not in {p.range}"


def test_a_list_parameter_needs_a_typed_default_and_a_range_needs_a_number():
    with pytest.raises(ValueError, match="needs an element"):
        Param("x", [], "empty list")
    with pytest.raises(ValueError, match="a range needs a number"):
        Param("x", "a", "text", (0, 1))
    assert Param("x", [0.5], "floats").type == "float_list"
    assert Param("x", True, "flag").type == "bool"


@pytest.mark.parametrize("file_name", NODE_FILES)
def test_config_files_hold_only_declared_parameters_that_the_use_changes(file_name):
    content = yaml.safe_load(config_path(file_name).read_text())
    assert len(content) == 1, f"{file_name}: one node per file"
    ((node, section),) = content.items()
    values = section["ros__parameters"]
    assert values, f"{file_name} changes nothing"
    table = _table(node)
    for key, value in values.items():
        assert key in table, f"{file_name}: '{key}' is not a parameter of the {node} node"
        declared = table[key]
        assert _type(value) == declared.type, (
            f"{file_name}: {key} is a {_type(value)}, declared {declared.type}"
        )
        assert value != declared.default, (
            f"{file_name}: {key}: {value!r} is the declared default; leave it out"
        )
        if declared.range is not None:
            assert declared.range[0] <= value <= declared.range[1], f"{file_name}: {key}"


def test_every_config_file_belongs_to_a_node_and_the_safety_limits():
    shipped = {p.name for p in config_path(".").glob("*.yaml")}
    assert shipped == {*NODE_FILES, "piper.yaml"}


def test_the_real_arm_configuration_enables_nothing_at_start_up():
    controller = _table("controller")
    assert controller["auto_enable"].default is False
    real = yaml.safe_load(config_path("controller.yaml").read_text())["controller"]
    assert real["ros__parameters"].get("auto_enable", False) is False
    bringup = GRAPHS["bringup"]
    assert bringup.argument("auto_enable").default == "false"


_OVERRIDE_TYPES = {"str": "str", "float": "float", "int": "int", "bool": "bool"}


@pytest.mark.parametrize("graph_name", sorted(GRAPHS))
def test_graph_overrides_name_declared_parameters_of_their_type(graph_name):
    g = GRAPHS[graph_name]
    for node in g.nodes:
        table = _table(node.name)
        for override in node.overrides:
            assert override.parameter in table, f"{graph_name}: {node.name}.{override.parameter}"
            declared = table[override.parameter].type
            wanted = "str_list" if override.type == "str_list" else _OVERRIDE_TYPES[override.type]
            assert declared == wanted, (
                f"{graph_name}: {node.name}.{override.parameter} is {wanted}, declared {declared}"
            )
        for file_name in node.params_files:
            assert file_name in NODE_FILES, f"{graph_name}: {node.name} reads {file_name}"
            content = yaml.safe_load(config_path(file_name).read_text())
            assert list(content) == [node.name], f"{file_name} is not {node.name}'s"


def test_the_simulated_graphs_enable_their_simulated_arm_and_the_real_one_does_not():
    from dream_vla_ros.graphs import node_command, parse_arguments

    for name in ("sim", "collect", "collect_world", "sim_world"):
        g = GRAPHS[name]
        cmd = node_command(g.node("controller"), parse_arguments(g, []))
        assert "auto_enable:=true" in cmd and "arm.backend:='sim'" in cmd, name
        assert not any("controller.yaml" in a for a in cmd), name
    g = GRAPHS["bringup"]
    cmd = node_command(g.node("controller"), parse_arguments(g, ["checkpoint:=/x"]))
    assert "auto_enable:=false" in cmd and any(a.endswith("config/controller.yaml") for a in cmd)


def test_declared_ranges_and_read_only_parameters_are_enforced_by_rclpy():
    import rclpy
    from rclpy.node import Node
    from rclpy.parameter import Parameter

    from dream_vla_ros.ros.parameters import declare_parameters

    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        node = Node("parameter_table_test", context=context)
        table = (
            Param("rate", 10.0, "a rate", (1.0, 20.0), dynamic=True),
            Param("name", "a", "fixed"),
            Param("names", ["x", "y"], "a list"),
        )
        values = declare_parameters(node, table)
        assert values == {"rate": 10.0, "name": "a", "names": ["x", "y"]}
        ok = node.set_parameters([Parameter("rate", value=15.0)])[0]
        assert ok.successful and node.get_parameter("rate").value == 15.0
        assert not node.set_parameters([Parameter("rate", value=25.0)])[0].successful
        assert not node.set_parameters([Parameter("name", value="b")])[0].successful
        assert node.describe_parameter("rate").description == "a rate"
        with pytest.raises(ValueError, match="declared twice"):
            declare_parameters(node, (Param("z", 1, "z"), Param("z", 2, "z")))
        node.destroy_node()
    finally:
        rclpy.try_shutdown(context=context)


def test_the_offline_loops_run_the_policy_as_the_simulated_graphs_policy_node_does():
    """The proxy's re-plan period and the DAgger collector's policy settings are the
    sim policy node's (config/policy_sim.yaml over the node's defaults, the place
    task's views): a change to one that the others miss would make the proxy screen
    or the collector label another policy than the graph runs."""
    from dream_vla_ros.evaluation.closed_loop import TASK_VIEWS
    from dream_vla_ros.evaluation.dagger import POLICY_TIMING, SIM_POLICY
    from dream_vla_ros.evaluation.kinematic import ProxySettings

    node = {name: p.default for name, p in _table("policy").items()}
    with open(config_path("policy_sim.yaml")) as f:
        node.update(yaml.safe_load(f)["policy"]["ros__parameters"])
    graph = {
        "noise_scale": node["flow_noise_scale"],
        "smooth_degree": node["chunk_smooth_degree"],
        "ensemble_chunks": node["chunk_ensemble"],
        "views": TASK_VIEWS["place"],  # the DAgger collector runs the place task
    }
    assert graph == SIM_POLICY
    # the node re-plans on each new camera frame, up to its rate cap
    world = {name: p.default for name, p in _table("sim_world").items()}
    with open(config_path("sim_world.yaml")) as f:
        world.update(yaml.safe_load(f)["sim_world"]["ros__parameters"])
    replan_s = 1.0 / min(node["max_inference_rate_hz"], world["rate_hz"])
    assert POLICY_TIMING["replan_s"] == pytest.approx(replan_s)
    assert ProxySettings().replan_s == pytest.approx(replan_s)
