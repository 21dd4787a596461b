"""What every node's `main()` does: local DDS, init, build the node (a bad parameter
or a missing device ends the process with one line and exit code 1), spin until
Ctrl-C, shut down cleanly."""

from __future__ import annotations

import sys
from collections.abc import Callable

import rclpy
from rclpy._rclpy_pybind11 import RCLError
from rclpy.executors import Executor, ExternalShutdownException
from rclpy.node import Node

from dream_vla_ros.dds import apply_local_dds


def run_node(
    label: str,
    make_node: Callable[[], Node],
    make_executor: Callable[[], Executor],
    start_errors: tuple[type[BaseException], ...] = (ValueError,),
    args: list[str] | None = None,
) -> None:
    apply_local_dds()
    rclpy.init(args=args)
    try:
        node = make_node()
    except start_errors as exc:
        print(f"{label}: {exc}", file=sys.stderr)
        rclpy.try_shutdown()
        sys.exit(1)
    except KeyboardInterrupt:  # Ctrl-C while starting up: a clean exit, not a traceback
        rclpy.try_shutdown()
        return
    executor = make_executor()
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except RCLError:
        # SIGINT's handler shuts the context down; landing while the executor builds
        # its wait set, that surfaces as "context is not valid" instead of the
        # ExternalShutdownException above. Only then is it a clean exit.
        if rclpy.ok():
            raise
    finally:
        shutdown = getattr(node, "shutdown", None)
        if callable(shutdown):
            shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
