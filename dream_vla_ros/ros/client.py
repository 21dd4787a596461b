"""`GraphClient`: an rclpy node that lives in a tool's or a test's own process,
spins on a background thread (its own context, so it never touches a global rclpy
state) and drives a running graph: service calls, parameters, matched publishers,
and, once `watch()`ed, the measured joints, the nodes' /diagnostics and the front
camera. The closed-loop tools (dream_vla_ros.evaluation, through its
`GraphDriver` interface) and the tests use it."""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import numpy as np
import rclpy
from rclpy.client import Client
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node

from dream_vla_ros.control import JOINT_NAMES
from dream_vla_ros.evaluation.driver import GraphError
from dream_vla_ros.ros.guards import MessageRefused, joint_positions


class GraphClient:
    def __init__(self, name: str = "graph_client") -> None:
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = Node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._clients: dict[tuple[type, str], Client] = {}
        self._clients_lock = threading.Lock()
        self._publishers: dict[tuple[Any, str, int], Any] = {}
        self.lock = threading.Lock()
        self.q: np.ndarray | None = None
        self.on_state: Callable[[float, np.ndarray], None] | None = None
        # called with each /sim_world/objects report (the physics world's state)
        self.on_objects: Callable[[dict], None] | None = None
        self._frames: list[np.ndarray] | None = None  # front images, while recording
        self._frame_limit = 0
        self._diag: dict[str, dict[str, str]] = {}  # status name -> values (+ "message")
        self._diag_count: dict[str, int] = {}  # status name -> reports received
        self._watching = False
        # the newest callbacks that failed (the client goes on)
        self.errors: deque[str] = deque(maxlen=100)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while self.context.ok():
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except Exception as exc:  # a callback failed, or the context shut down
                if not self.context.ok():
                    return
                self.errors.append(f"{type(exc).__name__}: {exc}")

    def now(self) -> float:
        return self.node.get_clock().now().nanoseconds * 1e-9

    # -- services, parameters, publishers ------------------------------------------
    def call(self, srv_type, name: str, request=None, timeout: float = 10.0):
        """Call a service and wait for the answer; GraphError (a TimeoutError) names
        what did not come.

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
            raise GraphTimeout(f"service {name} not available")
        future = client.call_async(request or srv_type.Request())
        deadline = time.monotonic() + timeout
        while not future.done():
            if time.monotonic() > deadline:
                client.remove_pending_request(future)
                raise GraphTimeout(f"service {name} did not answer")
            time.sleep(0.01)
        return future.result()

    def trigger(self, service: str, check: bool = True) -> tuple[bool, str]:
        """Call a std_srvs/Trigger service: (success, message); with `check` a refusal
        is a GraphError."""
        from std_srvs.srv import Trigger

        reply = self.call(Trigger, service, timeout=20.0)
        if check and not reply.success:
            raise GraphError(f"{service}: {reply.message}")
        return reply.success, reply.message

    def set_param(self, node: str, name: str, value: bool | int | str) -> None:
        from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
        from rcl_interfaces.srv import SetParameters

        if isinstance(value, bool):
            pv = ParameterValue(type=ParameterType.PARAMETER_BOOL, bool_value=value)
        elif isinstance(value, int):
            pv = ParameterValue(type=ParameterType.PARAMETER_INTEGER, integer_value=value)
        else:
            pv = ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=value)
        request = SetParameters.Request(parameters=[Parameter(name=name, value=pv)])
        reply = self.call(SetParameters, f"/{node}/set_parameters", request, timeout=20.0)
        if not reply.results[0].successful:
            raise GraphError(f"{node}: {name} := {value!r} refused: {reply.results[0].reason}")

    def publisher(self, msg_type, topic: str, depth: int = 10, timeout: float = 20.0):
        """A publisher that is already matched to a subscriber.

        Messages published before DDS discovery completes are dropped, so whoever
        times its first message waits for the match first."""
        key = (msg_type, topic, depth)
        if key not in self._publishers:
            pub = self.node.create_publisher(msg_type, topic, depth)
            self.wait(lambda: pub.get_subscription_count() > 0, timeout, f"a subscriber of {topic}")
            self._publishers[key] = pub
        return self._publishers[key]

    def send_chunk(
        self,
        stamp_s: float,
        positions: np.ndarray,
        period_s: float,
        topic: str = "/dream_vla/action_chunk",
    ) -> None:
        """An action chunk (JointTrajectory) of absolute targets (n, 7), one every
        `period_s` after `stamp_s`."""
        from trajectory_msgs.msg import JointTrajectory

        from dream_vla_ros.ros.conversions import chunk_message

        msg = chunk_message(stamp_s, JOINT_NAMES, positions, period_s)
        self.publisher(JointTrajectory, topic).publish(msg)

    def send_instruction(self, text: str, topic: str = "/policy/instruction") -> None:
        from std_msgs.msg import String

        msg = String()
        msg.data = text
        self.publisher(String, topic).publish(msg)

    def wait(
        self, predicate: Callable[[], bool], timeout_s: float, what: str | Callable[[], str]
    ) -> None:
        """Until `predicate()`; GraphTimeout after `timeout_s` (see `wait_until`)."""
        wait_until(predicate, timeout_s, what)

    # -- watching the graph ---------------------------------------------------------
    def watch(self, front_topic: str = "/camera/front/image_raw") -> None:
        """Subscribe to /joint_states, /diagnostics, the physics world's objects and
        the front camera (frames are kept only while `record_frames` asks for them)."""
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import Image, JointState
        from std_msgs.msg import String

        if self._watching:
            return
        self._watching = True
        self.node.create_subscription(JointState, "/joint_states", self._on_state, 50)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, 20)
        self.node.create_subscription(Image, front_topic, self._on_image, qos_profile_sensor_data)
        self.node.create_subscription(String, "/sim_world/objects", self._on_objects, 20)

    def _on_objects(self, msg) -> None:
        with self.lock:
            hook = self.on_objects
        if hook is not None:
            hook(json.loads(msg.data))

    def _on_state(self, msg) -> None:
        try:
            q = joint_positions(msg, JOINT_NAMES)
        except MessageRefused:
            return  # not the controller's (a test's or a tool's bad message)
        with self.lock:
            self.q = q
            hook = self.on_state
        if hook is not None:
            hook(self.now(), q)

    def _on_diag(self, msg) -> None:
        with self.lock:
            for s in msg.status:
                self._diag[s.name] = {"message": s.message, **{kv.key: kv.value for kv in s.values}}
                self._diag_count[s.name] = self._diag_count.get(s.name, 0) + 1

    def _on_image(self, msg) -> None:
        with self.lock:
            if self._frames is not None and len(self._frames) < self._frame_limit:
                image = np.frombuffer(bytes(msg.data), np.uint8)
                self._frames.append(image.reshape(msg.height, msg.width, 3).copy())

    def measured(self) -> np.ndarray | None:
        with self.lock:
            return None if self.q is None else self.q.copy()

    def status(self, name: str) -> dict[str, str]:
        """The last /diagnostics values of status `name` (with its "message")."""
        with self.lock:
            return dict(self._diag.get(name, {}))

    def diagnostics_count(self, name: str) -> int:
        with self.lock:
            return self._diag_count.get(name, 0)

    def record_frames(self, limit: int) -> None:
        with self.lock:
            self._frames, self._frame_limit = [], limit

    def take_frames(self) -> list[np.ndarray]:
        with self.lock:
            frames, self._frames = self._frames or [], None
        return frames

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)
        self._thread.join(2)


class GraphTimeout(GraphError, TimeoutError):
    """A service, a subscriber or a state of the graph did not come in time."""


def wait_until(
    predicate: Callable[[], bool],
    timeout_s: float,
    what: str | Callable[[], str],
    error: type[Exception] = GraphTimeout,
) -> None:
    """Poll `predicate` every 10 ms; after `timeout_s`, `error` naming `what` (a
    callable is asked only then, to show the state that was awaited)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            text = what() if callable(what) else what
            raise error(f"timed out after {timeout_s:g} s waiting for {text}")
        time.sleep(0.01)
