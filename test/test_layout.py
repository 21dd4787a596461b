"""The package's layout rules, read from the source with `ast`: no import cycles,
nothing imports the CLI, only `ros/` imports rclpy (directly or through
another module of the package), and only `dream-vla convert` unpickles."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "dream_vla_ros"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every module that `path` imports, at any depth of the file (lazy imports too)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        graph[name] = {m for m in _imports(path) if m in modules and m != name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (module names, first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            # a package's __init__ importing its own submodules is not a cycle
            if nxt.startswith(node + "."):
                continue
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_the_package_has_no_import_cycles():
    graph = _graph()
    assert len(graph) > 50  # the whole package was read
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_nothing_in_the_package_imports_the_cli():
    offenders = [
        name
        for name, deps in _graph().items()
        if not name.startswith("dream_vla_ros.cli")
        and any(d == "dream_vla_ros.cli" or d.startswith("dream_vla_ros.cli.") for d in deps)
    ]
    assert offenders == []


def test_only_ros_imports_rclpy():
    ros = "dream_vla_ros.ros"
    direct = {
        _module_name(p)
        for p in PACKAGE.rglob("*.py")
        if any(m == "rclpy" or m.startswith("rclpy.") for m in _imports(p))
    }
    assert direct and all(m.startswith(ros + ".") for m in direct), sorted(direct)
    # and no core reaches ros/ (and so rclpy) through the package; the CLI may
    cores = ("model", "policy", "control", "robot", "data", "finetune", "evaluation", "sim")
    graph = _graph()
    for name, deps in graph.items():
        if name.split(".")[1:2] and name.split(".")[1] in cores:
            assert not any(d.startswith(ros) for d in deps), f"{name} imports {ros}"


def test_a_long_module_says_why_it_is_long():
    for path in PACKAGE.rglob("*.py"):
        lines = path.read_text().count("\n")
        if lines > 400:
            doc = ast.get_docstring(ast.parse(path.read_text())) or ""
            assert "longer than" in doc, f"{path.name} has {lines} lines and does not say why"


def test_only_convert_opens_a_pickle():
    """torch.load (always with weights_only=True) and pickle appear in model/convert.py
    only: the policy, the nodes and the trainer never unpickle anything."""
    found = []
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "load"
                and getattr(node.func.value, "id", "") == "torch"
            ):
                keywords = {k.arg: k.value for k in node.keywords}
                safe = getattr(keywords.get("weights_only"), "value", None) is True
                found.append((path.relative_to(PACKAGE).as_posix(), safe))
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] + [getattr(node, "module", "") or ""]
                if any(n.split(".")[0] in ("pickle", "dill", "cloudpickle") for n in names):
                    found.append((path.relative_to(PACKAGE).as_posix(), False))
    assert found == [("model/convert.py", True)], found
