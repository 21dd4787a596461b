"""`dream-vla play BAG`: publish a bag's topics with the recorded timing and `/clock`.

The stand-in for `ros2 bag play` where the ROS CLI is absent. Messages are
published serialized, exactly as recorded (no deserialization). `/clock`
carries the bag time at `clock_hz` and with every message, so nodes run with
`use_sim_time:=true` follow the recording.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import rclpy
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from rosgraph_msgs.msg import Clock

from dream_vla_ros.data.replay import PlaySettings, bag_topics, schedule
from dream_vla_ros.dds import apply_local_dds
from dream_vla_ros.ros.conversions import message_class

SETTLE_S = 1.5  # discovery is taken as complete when nothing changed for this long


def wait_for_matches(
    node: Node, publishers: dict, timeout_s: float, stop: threading.Event
) -> tuple[int, int]:
    """Wait (at most `timeout_s`) until at least one subscriber on the bag's topics
    is known, every one known is matched to its publisher, and discovery has been
    quiet for SETTLE_S: a message published before its subscriber matched is lost.
    "At least one": a player started on a loaded host can take longer than SETTLE_S
    to discover a subscriber that already exists (a test's subscriber received none
    of 124 messages), and nothing known looked like everything matched. Returns
    (matched, known) subscriptions at the end."""
    deadline = time.monotonic() + timeout_s
    last, quiet_since = None, time.monotonic()
    matched = known = 0
    while time.monotonic() < deadline and not stop.is_set():
        counts = tuple(
            (node.count_subscribers(t), p.get_subscription_count()) for t, p in publishers.items()
        )
        if counts != last:
            last, quiet_since = counts, time.monotonic()
        known = sum(k for k, _ in counts)
        matched = sum(min(k, m) for k, m in counts)
        if known and matched == known and time.monotonic() - quiet_since >= SETTLE_S:
            break
        time.sleep(0.05)
    return matched, known


def play(
    bag: str | Path,
    s: PlaySettings,
    clock_hz: float = 100.0,
    wait_for_subscribers_s: float = 5.0,
    stop: threading.Event | None = None,
    log=print,
) -> int:
    """Play until the end (or forever with loop); returns the number of messages published.

    Before the first message it waits, at most `wait_for_subscribers_s` (0: not at
    all), for the subscribers that already exist to match (`wait_for_matches`)."""
    topics, start_ns, end_ns = bag_topics(bag, s)
    apply_local_dds()
    context = rclpy.Context()
    rclpy.init(context=context)
    node = Node("player", context=context)
    stop = stop or threading.Event()
    try:
        publishers = {}
        for topic in topics:
            try:
                cls = message_class(topic.msgtype)
            except (ImportError, AttributeError, ValueError):
                log(f"play: skipping {topic.name}: message type {topic.msgtype} is not installed")
                continue
            publishers[topic.name] = node.create_publisher(
                cls, topic.name, QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
            )
        clock_qos = QoSProfile(
            depth=1,
            reliability=ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.TRANSIENT_LOCAL,
        )
        clock_pub = node.create_publisher(Clock, "/clock", clock_qos)
        if wait_for_subscribers_s > 0:
            matched, known = wait_for_matches(node, publishers, wait_for_subscribers_s, stop)
            if not known:
                log(
                    f"play: no subscriber on the bag's topics within {wait_for_subscribers_s:g}"
                    " s; playing anyway"
                )
            elif matched < known:
                log(
                    f"play: {known - matched} of {known} subscriptions did not match within "
                    f"{wait_for_subscribers_s:g} s; their first messages may be lost "
                    "(--wait-for-subscribers longer)"
                )
        log(
            f"play: {len(publishers)} topics, {(end_ns - start_ns) * 1e-9:.1f} s of bag "
            f"at rate {s.rate}" + (" (loop)" if s.loop else "")
        )
        published = 0
        clock_period = 1.0 / clock_hz

        def publish_clock(bag_ns: int) -> None:
            msg = Clock()
            msg.clock.sec, msg.clock.nanosec = divmod(bag_ns, 1_000_000_000)
            clock_pub.publish(msg)

        while not stop.is_set():
            t_start = time.monotonic()
            first_ns = start_ns + int(s.start_offset_s * 1e9)
            next_clock = 0.0
            for item in schedule(bag, s):
                # /clock ticks while waiting for the next message
                while not stop.is_set():
                    now = time.monotonic() - t_start
                    if now >= item.offset_s:
                        break
                    if now >= next_clock:
                        publish_clock(first_ns + int(now * s.rate * 1e9))
                        next_clock = now + clock_period
                    time.sleep(min(clock_period, item.offset_s - now))
                if stop.is_set():
                    break
                publish_clock(item.bag_time_ns)
                pub = publishers.get(item.topic)
                if pub is not None:
                    pub.publish(item.data)
                    published += 1
            if not s.loop:
                break
        return published
    finally:
        node.destroy_node()
        rclpy.try_shutdown(context=context)
