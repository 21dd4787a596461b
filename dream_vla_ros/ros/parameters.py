"""Node parameters declared from one table per node.

Each node lists its parameters once, at the top of its module, as `Param`s:
name, default, description, range, and whether it may change at run time. The
table is the only place a default is written; the YAML files in config/ hold only
what one use changes, and test_parameters.py checks them against the tables.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.node import Node

Value = bool | int | float | str | list[str] | list[int] | list[float]


@dataclass(frozen=True)
class Param:
    name: str
    default: Value
    description: str
    range: tuple[float, float] | None = None  # inclusive bounds of a number
    dynamic: bool = False  # settable at run time (else read-only once declared)

    def __post_init__(self) -> None:
        if isinstance(self.default, list) and not self.default:
            raise ValueError(f"{self.name}: a list default needs an element to carry its type")
        if self.range is not None and self.type not in ("int", "float"):
            raise ValueError(f"{self.name}: a range needs a number, not a {self.type}")

    @property
    def type(self) -> str:
        """bool | int | float | str | bool_list | int_list | float_list | str_list."""
        value = self.default[0] if isinstance(self.default, list) else self.default
        name = type(value).__name__
        return f"{name}_list" if isinstance(self.default, list) else name

    def descriptor(self) -> ParameterDescriptor:
        ranges: dict[str, Any] = {}
        if self.range is not None:
            lo, hi = self.range
            if self.type == "int":
                ranges["integer_range"] = [
                    IntegerRange(from_value=int(lo), to_value=int(hi), step=1)
                ]
            else:
                ranges["floating_point_range"] = [
                    FloatingPointRange(from_value=float(lo), to_value=float(hi), step=0.0)
                ]
        return ParameterDescriptor(
            description=self.description, read_only=not self.dynamic, **ranges
        )


def declare_parameters(node: Node, table: Sequence[Param]) -> dict[str, Any]:
    """Declare every parameter of `table` on `node`; returns {name: value}."""
    names = [p.name for p in table]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"parameters declared twice: {duplicates}")
    for p in table:
        node.declare_parameter(p.name, p.default, p.descriptor())
    return {p.name: node.get_parameter(p.name).value for p in table}


def table_index(table: Sequence[Param]) -> dict[str, Param]:
    return {p.name: p for p in table}
