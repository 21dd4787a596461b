"""An rclpy node that lives in a tool's or a test's own process and spins on a
background thread (its own context, so it never touches a global rclpy state).
Drivers (ros/closed_loop.py) and the tests' helpers build on it."""

from __future__ import annotations

import threading
import time

import rclpy
from rclpy.client import Client
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node


class BackgroundNode:
    def __init__(self, name: str) -> None:
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = Node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._clients: dict[tuple[type, str], Client] = {}
        self._clients_lock = threading.Lock()
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        try:
            while self.context.ok():
                self.executor.spin_once(timeout_sec=0.05)
        except Exception:  # the context shut down while spinning
            pass

    def now(self) -> float:
        return self.node.get_clock().now().nanoseconds * 1e-9

    def call(self, srv_type, name: str, request=None, timeout: float = 10.0):
        """Call a service and wait for the answer; TimeoutError names what did not come.

        One client per (type, name), kept for the next call: a fresh client per call
        was a fresh discovery per call, and a service that answered before it had
        matched the new client's response reader dropped the answer (rmw_fastrtps:
        "failed to send response (timeout)"; config/dds/localhost.xml lengthens that
        wait too)."""
        with self._clients_lock:
            client = self._clients.get((srv_type, name))
            if client is None:
                client = self._clients[(srv_type, name)] = self.node.create_client(srv_type, name)
        if not client.wait_for_service(timeout_sec=timeout):
            raise TimeoutError(f"service {name} not available")
        future = client.call_async(request or srv_type.Request())
        deadline = time.monotonic() + timeout
        while not future.done():
            if time.monotonic() > deadline:
                client.remove_pending_request(future)
                raise TimeoutError(f"service {name} did not answer")
            time.sleep(0.01)
        return future.result()

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)
        self._thread.join(2)
