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
from dream_vla_ros.ros.guards import InputGuard


def spin(node: Node, executor: Executor) -> None:
    """Spin until Ctrl-C or shutdown. An exception that escapes a callback, or that
    rclpy raises while taking a message, is reported through the node's InputGuard
    (or logged) and the node goes on: one message never takes a node down.

    When SIGINT shuts the context down while the executor is taking a message,
    rclpy fails to convert the message ("RuntimeError: Unable to convert call
    argument '0' to Python object" from `take_message`): with the context gone
    that is the shutdown, and a clean exit."""
    while rclpy.ok():
        try:
            executor.spin_once(timeout_sec=0.1)
        except (KeyboardInterrupt, ExternalShutdownException):
            return
        except RCLError:
            # SIGINT's handler shuts the context down; landing while the executor builds
            # its wait set, that surfaces as "context is not valid" instead of the
            # ExternalShutdownException above. Only then is it a clean exit.
            if rclpy.ok():
                raise
            return
        except Exception as exc:
            if not rclpy.ok():
                return  # the failure was the shutdown's (see above)
            guard = getattr(node, "guard", None)
            if isinstance(guard, InputGuard):
                guard.refuse("the executor", f"{type(exc).__name__}: {exc}")
            else:
                node.get_logger().error(
                    f"callback failed, going on: {type(exc).__name__}: {exc}",
                    throttle_duration_sec=2.0,
                )


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
        spin(node, executor)
    finally:
        shutdown = getattr(node, "shutdown", None)
        if callable(shutdown):
            shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
