"""Supervision by the launcher: the controller is the critical node of a graph; any
other node that dies is restarted with a back-off or left down, the graph runs on,
and the controller's watchdog holds the arm."""

from __future__ import annotations

import io
import itertools
import os
import signal
import time

import numpy as np
import pytest
from margins import record
from rosutil import wait_for

from dream_vla_ros.graphs import Graph, NodeSpec, Override
from dream_vla_ros.launcher import Launcher, describe_exit

pytestmark = pytest.mark.ros

CAM = "dream_vla_ros.ros.sim_camera_node"


def _cam(name: str, *overrides: Override, **supervision) -> NodeSpec:
    return NodeSpec(name, CAM, "sim_camera_node", (), overrides, **supervision)


def test_exits_are_described_in_words():
    assert describe_exit(-signal.SIGKILL) == "was killed by SIGKILL"
    assert describe_exit(1) == "exited with code 1"
    assert describe_exit(0) == "exited cleanly"


def test_a_dying_node_is_restarted_or_left_down_and_the_critical_one_stops_the_graph():
    """...and the restarted node, on a DDS participant id of its own, hears the
    joint states this process sends (the writer that knew the killed one) and is
    heard: it renders them."""
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image, JointState

    from dream_vla_ros.control.config import JOINT_NAMES
    from dream_vla_ros.ros.client import GraphClient
    from dream_vla_ros.ros.conversions import sec_to_time

    again_topic = "/again/image_raw"
    g = Graph(
        "three",
        "a critical node, a restarted one and one left down",
        (),
        (
            _cam("main", critical=True),
            _cam("again", Override("front_topic", again_topic), restart=True),
            _cam("once"),
        ),
    )
    log = io.StringIO()
    launcher = Launcher(g, {}, out=log, grace_s=5.0)
    os.environ.update(launcher.env)  # this process joins the graph's DDS domain
    launcher.start()
    main, again, once = launcher.children
    client = GraphClient("restart_test")
    heard: list[float] = []
    client.node.create_subscription(
        Image, again_topic, lambda _m: heard.append(time.monotonic()), qos_profile_sensor_data
    )
    states = client.node.create_publisher(JointState, "/joint_states", 10)

    def send_state() -> None:
        msg = JointState(name=list(JOINT_NAMES), position=[0.0] * len(JOINT_NAMES))
        msg.header.stamp = sec_to_time(client.now())
        states.publish(msg)

    client.node.create_timer(0.1, send_state)
    try:
        wait_for(lambda: all(c.alive() for c in launcher.children), 20, "three nodes")
        wait_for(lambda: len(heard) > 0, 60, "an image of the node to be killed")
        first_pid = again.proc.pid
        os.kill(first_pid, signal.SIGKILL)
        os.kill(once.proc.pid, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while again.restarts == 0 and time.monotonic() < deadline:
            assert launcher.check() == 0, log.getvalue()
            time.sleep(0.05)
        assert again.restarts == 1 and again.proc.pid != first_pid
        wait_for(again.alive, 10, "the restarted node")
        assert main.alive() and not once.alive() and once.down
        text = log.getvalue()
        assert "node 'again' was killed by SIGKILL; restarting it in 1 s" in text, text
        assert "node 'once' was killed by SIGKILL; it stays down, the graph runs on" in text
        assert "node 'again' restarted (1 of 5, DDS participant id 16)" in text, text
        restarted_at = time.monotonic()
        wait_for(lambda: heard and heard[-1] > restarted_at, 60, "an image of the restarted node")
        os.kill(main.proc.pid, signal.SIGKILL)
        rc = launcher.run(poll_s=0.05)
    finally:
        client.close()
        launcher.shutdown()
    assert rc != 0 and launcher.failed == "node 'main' was killed by SIGKILL"
    assert "it is critical: stopping the graph" in log.getvalue()
    assert not any(c.alive() for c in launcher.children)


def test_restarts_back_off_and_end():
    from dream_vla_ros import launcher as launcher_module

    g = Graph(
        "one",
        "a node that always dies",
        (),
        (_cam("main", critical=True), _cam("flaky", restart=True)),
    )
    log = io.StringIO()
    launcher = Launcher(g, {}, out=log, grace_s=5.0).start()
    flaky = launcher.children[1]
    delays = []
    try:
        for _ in range(launcher_module.RESTARTS + 1):
            wait_for(flaky.alive, 20, "the flaky node")
            flaky.signal_group(signal.SIGKILL)
            wait_for(lambda: flaky.proc.poll() is not None, 10, "the flaky node to die")
            launcher.check()
            if flaky.restart_at is not None:
                delays.append(round(flaky.restart_at - time.monotonic()))
                flaky.restart_at = time.monotonic()  # do not wait the back-off out
                launcher.check()
        assert delays == [1, 2, 4, 8, 16]
        assert flaky.down and flaky.restarts == launcher_module.RESTARTS
        assert "it stays down after 5 restarts" in log.getvalue()
        assert launcher.children[0].alive()
    finally:
        launcher.shutdown()


def test_killing_the_policy_leaves_the_controller_holding_the_arm(tmp_path):
    """The sim graph under the launcher: SIGKILL of the policy while the arm moves.
    The controller and the cameras run on, the controller's watchdog brings the arm
    to a hold within its limits, and the policy comes back after its back-off."""
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import JointState

    from dream_vla_ros.control import load_safety_config
    from dream_vla_ros.graphs import SIM, parse_arguments
    from dream_vla_ros.ros.client import GraphClient
    from dream_vla_ros.ros.conversions import time_to_sec

    limits = load_safety_config()
    log_path = tmp_path / "graph.log"
    log = log_path.open("w")
    values = parse_arguments(SIM, ["camera_rate_hz:=8.0", "can_name:=supervised"])
    launcher = Launcher(SIM, values, out=log, grace_s=5.0)
    os.environ.update(launcher.env)  # this process joins the graph's DDS domain
    launcher.start()
    client = GraphClient("supervision_test")
    client.watch()
    commands: list[tuple[float, np.ndarray, np.ndarray]] = []
    reliable = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)
    client.node.create_subscription(
        JointState,
        "/controller/command",
        lambda m: commands.append(
            (time_to_sec(m.header.stamp), np.array(m.position), np.array(m.velocity))
        ),
        reliable,
    )
    children = {c.name: c for c in launcher.children}

    def accepted() -> int:
        return int(client.status("dream_vla/controller").get("chunks_accepted", 0))

    def moving() -> bool:
        recent = commands[-20:]
        return len(recent) == 20 and max(np.abs(v[:6]).max() for _, _, v in recent) > 0.01

    try:
        wait_for(lambda: accepted() >= 5, 180, lambda: "policy chunks\n" + log_path.read_text())
        wait_for(moving, 30, "the arm to move under the policy")
        killed_at = client.now()
        children["policy"].signal_group(signal.SIGKILL)
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            assert launcher.check() == 0, log_path.read_text()
            time.sleep(0.05)
        # within the watchdog (chunk timeout) plus the braking time the arm holds
        hold_from = killed_at + limits.chunk_timeout_s + 1.0
        # commands stamped half a second into the hold (delivery lags on a loaded host)
        wait_for(lambda: commands[-1][0] > hold_from + 0.5, 30, "the controller's commands")
        after = [(t, q, v) for t, q, v in commands if t >= killed_at]
        assert children["controller"].alive() and children["sim_camera"].alive()
        controller = client.status("dream_vla/controller")
        assert controller.get("mode") == "running", (controller, log_path.read_text()[-3000:])
        held = np.array([v[:6] for t, _, v in after if t >= hold_from])
        assert len(held) > 50 and np.abs(held).max() < 1e-6, np.abs(held).max()
        moving = [t for t, _, v in after if np.abs(v[:6]).max() >= 1e-6]
        held_after = (moving[-1] if moving else killed_at) - killed_at
        record("the arm held after the kill (s)", held_after, limits.chunk_timeout_s + 1.0)
        # and on the way there every step stays within the acceleration limits
        accel = np.array(limits.amax[:6])
        for (t0, _, v0), (t1, _, v1) in itertools.pairwise(after):
            dt = t1 - t0
            if dt > 0:
                # 1e-5: stamps are float seconds since 1970, good to ~0.5 us
                assert np.all(np.abs(v1[:6] - v0[:6]) <= accel * dt + 1e-5), t1 - killed_at
        text = log_path.read_text()
        assert "node 'policy' was killed by SIGKILL; restarting it in 1 s, the graph runs on" in (
            text
        )
        before = accepted()
        wait_for(
            lambda: launcher.check() == 0 and accepted() > before + 3,
            180,
            lambda: "the restarted policy's chunks\n" + log_path.read_text(),
        )
        assert "node 'policy' restarted (1 of 5, DDS participant id 16)" in log_path.read_text()
    finally:
        client.close()
        launcher.shutdown()
        log.close()


def test_bad_messages_leave_every_node_alive_with_the_reason_on_diagnostics(tmp_path):
    """NaN and wrong-name joint states, and images of the wrong size and encoding,
    sent to every node of a running graph (controller, cameras, policy, teleop,
    recorder): every node stays up, and the nodes that use them say why on
    /diagnostics."""
    from sensor_msgs.msg import Image, JointState

    from dream_vla_ros.graphs import COLLECT, SIM, parse_arguments
    from dream_vla_ros.ros.client import GraphClient

    arguments = {a.name: a for a in (*SIM.arguments, *COLLECT.arguments)}
    nodes = (*SIM.nodes, COLLECT.node("teleop"), COLLECT.node("recorder"))
    g = Graph("everything", "every node kind", tuple(arguments.values()), nodes)
    values = parse_arguments(
        g, ["camera_rate_hz:=5.0", "can_name:=bad_input", f"output_dir:={tmp_path / 'ep'}"]
    )
    log_path = tmp_path / "graph.log"
    log = log_path.open("w")
    launcher = Launcher(g, values, out=log, grace_s=5.0)
    os.environ.update(launcher.env)
    launcher.start()
    client = GraphClient("bad_input_test")
    client.watch()
    try:
        wait_for(
            lambda: client.status("dream_vla/policy").get("ready") == "True",
            180,
            lambda: "the policy to warm up\n" + log_path.read_text(),
        )
        states = client.publisher(JointState, "/joint_states")
        front = client.publisher(Image, "/camera/front/image_raw")
        names = ["joint1", "joint2", "joint3", "joint4", "joint5", "joint6", "gripper"]
        nan = JointState(name=names, position=[0.0, float("nan"), 0, 0, 0, 0, 0.02])
        wrong = JointState(name=["a", "b"], position=[0.0, 1.0])
        short = JointState(name=names, position=[0.0, 1.0])
        odd = Image(height=4, width=4, encoding="yuv422", step=8, data=bytes(32))
        tiny = Image(height=2, width=2, encoding="rgb8", step=6, data=bytes(12))
        lying = Image(height=480, width=640, encoding="rgb8", step=1920, data=bytes(10))
        for _ in range(20):
            for msg in (nan, wrong, short):
                msg.header.stamp = client.node.get_clock().now().to_msg()
                states.publish(msg)
            for msg in (odd, tiny, lying):
                msg.header.stamp = client.node.get_clock().now().to_msg()
                front.publish(msg)
            time.sleep(0.1)
        # refused, counted, and the newest reason on /diagnostics (a WARN for 5 s)
        wait_for(
            lambda: (
                client.status("dream_vla/sim_camera")
                .get("message", "")
                .startswith("refused a message on /joint_states: JointState")
            ),
            10,
            lambda: f"sim_camera's reason: {client.status('dream_vla/sim_camera')}",
        )
        assert int(client.status("dream_vla/sim_camera")["refused /joint_states"]) > 0
        wait_for(
            lambda: "refused" in client.status("dream_vla/teleop").get("message", ""),
            10,
            lambda: f"teleop's reason: {client.status('dream_vla/teleop')}",
        )
        policy = client.status("dream_vla/policy")
        assert policy.get("refused /joint_states", "0") != "0", policy
        assert policy["message"] != "publishing chunks", policy
        time.sleep(1.0)
        assert launcher.check() == 0 and not launcher.deaths, log_path.read_text()
        assert all(c.alive() for c in launcher.children), log_path.read_text()
        controller = client.status("dream_vla/controller")
        assert controller.get("mode") == "running", (controller, log_path.read_text()[-3000:])
    finally:
        client.close()
        launcher.shutdown()
        log.close()


def test_joint_states_are_refused_with_the_problem_and_the_fix():
    from types import SimpleNamespace

    from dream_vla_ros.control import JOINT_NAMES
    from dream_vla_ros.ros.guards import MessageRefused, joint_positions

    names = list(JOINT_NAMES)
    good = SimpleNamespace(name=names[::-1], position=[float(i) for i in range(7)])
    assert joint_positions(good, JOINT_NAMES).tolist() == [6.0, 5, 4, 3, 2, 1, 0]
    cases = [
        (SimpleNamespace(name=names, position=[0.0] * 6 + [float("nan")]),
         "non-finite positions for gripper; fix the publisher"),
        (SimpleNamespace(name=["a", "b"], position=[0.0, 1.0]),
         "lacks joint1, joint2, joint3, joint4, joint5, joint6, gripper"),
        (SimpleNamespace(name=names, position=[0.0, 1.0]),
         "has 7 names but 2 positions; send one position per name"),
    ]  # fmt: skip
    for msg, words in cases:
        with pytest.raises(MessageRefused, match=words):
            joint_positions(msg, JOINT_NAMES)


def test_a_restart_gets_a_participant_id_no_earlier_process_of_the_graph_had(tmp_path):
    """The restart profile is the localhost profile with only the participant id
    added; ids run through the upper half of the discovered range, then automatic."""
    import xml.etree.ElementTree as ET

    from dream_vla_ros import dds

    ns = {"f": "http://www.eprosima.com"}
    path = dds.write_participant_profile(tmp_path / "p.xml", 20)
    written, base = ET.parse(path).getroot(), ET.parse(dds.profile_path()).getroot()
    ids = written.findall(".//f:participant/f:rtps/f:participantID", ns)
    assert [e.text for e in ids] == ["20"]
    rtps = written.find(".//f:participant/f:rtps", ns)
    rtps.remove(ids[0])
    assert ET.tostring(written) == ET.tostring(base)
    with pytest.raises(dds.DdsError, match=r"outside 0\.\.31"):
        dds.write_participant_profile(tmp_path / "q.xml", 32)

    launcher = Launcher(Graph("none", "no nodes", (), ()), {}, out=io.StringIO())
    seen = []
    for _ in range(len(dds.RESTART_PARTICIPANT_IDS) + 1):
        env, how = launcher.restart_env()
        seen.append(how)
        assert env["ROS_DOMAIN_ID"] == launcher.env["ROS_DOMAIN_ID"]
        if how.endswith("automatic (no fresh one left)"):
            assert env["FASTDDS_DEFAULT_PROFILES_FILE"] == dds.profile_path()
        else:
            profile = ET.parse(env["FASTDDS_DEFAULT_PROFILES_FILE"]).getroot()
            assert profile.find(".//f:participantID", ns).text == how.rsplit(" ", 1)[1]
    assert seen[0] == ", DDS participant id 16" and seen[15] == ", DDS participant id 31"
    assert seen[16] == ", DDS participant id automatic (no fresh one left)"
    launcher.shutdown()
    opted_out = Launcher(Graph("none", "", (), ()), {}, out=io.StringIO())
    opted_out.env["DREAM_VLA_DDS"] = "system"
    assert opted_out.restart_env() == (opted_out.env, "")


def test_dead_segments_are_those_whose_lock_nobody_holds(tmp_path):
    """A data segment is dead when its lock file exists and is not held and it is old
    enough; a held lock, a missing lock, a young segment and port segments are kept."""
    import fcntl

    from dream_vla_ros import dds

    def segment(name: str, age_s: float, lock: bool = True) -> None:
        path = tmp_path / name
        path.write_bytes(b"\0" * 1024)
        if lock:
            (tmp_path / f"{name}_el").touch()
        t = time.time() - age_s
        os.utime(path, (t, t))

    segment("fastdds_dead", 60)
    segment("fastdds_held", 60)
    segment("fastdds_young", 0)
    segment("fastdds_nolock", 60, lock=False)
    segment("fastdds_port7000", 60)
    holder = os.open(tmp_path / "fastdds_held_el", os.O_RDONLY)
    fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        assert dds.dead_segments(tmp_path, min_age_s=5) == [tmp_path / "fastdds_dead"]
        assert dds.remove_dead_segments(tmp_path, min_age_s=5) == 1024
    finally:
        os.close(holder)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert "fastdds_dead" not in left and "fastdds_dead_el" not in left
    assert {"fastdds_held", "fastdds_young", "fastdds_nolock", "fastdds_port7000"} <= set(left)
    assert dds.dead_segments(tmp_path / "missing") == []


def _segments_locked_by(pid: int) -> set[str]:
    """The Fast DDS data segments whose lock file process `pid` holds (/proc/locks)."""
    from dream_vla_ros import dds

    inodes = set()
    with open("/proc/locks") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 6 and parts[1] == "FLOCK" and parts[4] == str(pid):
                inodes.add(int(parts[5].rsplit(":", 1)[1]))
    owned = set()
    for name in os.listdir(dds.SHM_DIR):
        if name.startswith("fastdds_") and "port" not in name and name.endswith("_el"):
            try:
                if os.stat(dds.SHM_DIR / name).st_ino in inodes:
                    owned.add(name.removesuffix("_el"))
            except FileNotFoundError:
                continue
    return owned


def test_the_segments_of_a_killed_node_are_removed_and_a_live_ones_kept():
    """A node killed with SIGKILL leaves its Fast DDS data segments in /dev/shm; its
    launcher removes them when it sees the death, and the segments of a node that
    still runs stay (their lock files are held). The live node runs under a launcher
    of its own, in another DDS domain."""
    from dream_vla_ros import dds

    log = io.StringIO()
    gone = Launcher(Graph("gone", "a node to kill", (), (_cam("gone"),)), {}, out=log)
    gone.segment_min_age_s = 0.0
    other_domain = gone.domain_id % 100 + 1
    kept = Launcher(
        Graph("kept", "a live node", (), (_cam("kept"),)),
        {},
        domain_id=other_domain,
        out=io.StringIO(),
    )
    gone.start()
    kept.start()
    [victim], [live] = gone.children, kept.children
    try:
        # each participant holds the lock files of the data segments it made; a starting
        # one makes and drops some: wait until both have held the same ones for 1 s
        seen: list[tuple[float, set[str], set[str]]] = []

        def settled() -> bool:
            now = time.monotonic()
            seen.append(
                (now, _segments_locked_by(victim.proc.pid), _segments_locked_by(live.proc.pid))
            )
            held = [s[1:] for s in seen if s[0] >= now - 1.0]
            return seen[0][0] <= now - 1.0 and all(held[-1]) and all(h == held[-1] for h in held)

        wait_for(settled, 60, lambda: f"settled segments: {seen[-1][1:]}")
        _, theirs, mine = seen[-1]
        assert not any(dds.SHM_DIR / n in dds.dead_segments(min_age_s=0) for n in theirs | mine)
        os.kill(victim.proc.pid, signal.SIGKILL)
        victim.proc.wait(10)
        assert gone.check() != 0  # its only node: critical

        # the kernel lets go of the dead process's locks a moment later: a later check
        def swept() -> bool:
            gone.check()
            return "removed" in log.getvalue()

        wait_for(swept, 5, log.getvalue)
        assert "left in /dev/shm" in log.getvalue(), log.getvalue()
        assert not any((dds.SHM_DIR / n).exists() for n in theirs), theirs
        assert all((dds.SHM_DIR / n).exists() for n in mine) and live.alive()
        assert mine <= _segments_locked_by(live.proc.pid)
    finally:
        gone.shutdown()
        kept.shutdown()
