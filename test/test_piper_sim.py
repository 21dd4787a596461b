"""Simulator conformance through the unmodified piper_sdk, and the PiperArm driver on top."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest
from margins import record
from piper_sdk import C_PiperInterface_V2

from dream_vla_ros.control import load_safety_config
from dream_vla_ros.robot import ArmError, FirmwareParams, PiperArm, PiperFirmwareSim, PiperSettings
from dream_vla_ros.robot.piper import decode_driver_faults, decode_status_faults
from dream_vla_ros.robot.piper_sim import SimGripper

CFG = load_safety_config()
START = [0.1, 0.5, -0.5, 0.2, -0.3, 0.4, 0.01]
_names = itertools.count()


def wait_until(predicate, timeout=2.0):
    start = time.monotonic()
    while time.monotonic() < start + timeout:
        if predicate():
            record("wait: the simulated arm (s)", time.monotonic() - start, timeout)
            return True
        time.sleep(0.005)
    return False


@pytest.fixture
def sim_and_sdk():
    name = f"sdk-{next(_names)}"
    sim = PiperFirmwareSim(name, FirmwareParams.from_safety_config(CFG), START).start()
    sdk = C_PiperInterface_V2(name, judge_flag=False, can_auto_init=False)
    sdk.CreateCanBus(name, bustype="virtual", judge_flag=False)
    sdk.ConnectPort()
    assert wait_until(lambda: sdk.GetArmJointMsgs().time_stamp > 0)
    yield sim, sdk
    sdk.DisconnectPort()
    sim.stop()


@pytest.fixture
def arm():
    name = f"arm-{next(_names)}"
    sim = PiperFirmwareSim(name, FirmwareParams.from_safety_config(CFG), START).start()
    driver = PiperArm(PiperSettings(can_name=name, bustype="virtual"))
    driver.connect()
    yield sim, driver
    driver.close()
    sim.stop()


def test_sdk_reads_joints_in_millidegrees(sim_and_sdk):
    _, sdk = sim_and_sdk
    js = sdk.GetArmJointMsgs().joint_state
    got = [js.joint_1, js.joint_2, js.joint_3, js.joint_4, js.joint_5, js.joint_6]
    assert got == [round(np.degrees(v) * 1000) for v in START[:6]]
    assert sdk.GetArmGripperMsgs().gripper_state.grippers_angle == 10_000  # 0.01 m in 0.001 mm


def test_sdk_enable_status_follows_0x471(sim_and_sdk):
    _, sdk = sim_and_sdk
    assert wait_until(lambda: sdk.GetArmLowSpdInfoMsgs().time_stamp > 0)
    assert sdk.GetArmEnableStatus() == [False] * 6
    sdk.EnableArm(7)
    assert wait_until(lambda: all(sdk.GetArmEnableStatus()))
    sdk.DisableArm(3)
    assert wait_until(lambda: sdk.GetArmEnableStatus() == [True, True, False, True, True, True])


def test_sdk_joint_control_moves_under_firmware_limits(sim_and_sdk):
    sim, sdk = sim_and_sdk
    sdk.EnableArm(7)
    sdk.MotionCtrl_2(0x01, 0x01, 100, 0x00)
    assert wait_until(lambda: sdk.GetArmStatus().arm_status.ctrl_mode == 0x01)
    target = [20_000, 40_000, -20_000, 0, 10_000, -5_000]  # 0.001 degree
    speeds = []
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        sdk.JointCtrl(*target)
        speeds.append(np.abs(sim.velocity).max())
        js = sdk.GetArmJointMsgs().joint_state
        if (
            max(
                abs(a - b)
                for a, b in zip(
                    [js.joint_1, js.joint_2, js.joint_3, js.joint_4, js.joint_5, js.joint_6], target
                )
            )
            <= 2
        ):
            record("reaching the target (s)", time.monotonic() - deadline + 3.0, 3.0)
            break
        time.sleep(0.005)
    else:
        pytest.fail("the simulated arm did not reach the target")
    assert max(speeds) <= CFG.firmware_max_velocity_rad_s + 1e-9
    assert max(speeds) > 0.5  # it really moved fast, not by teleporting


def test_sdk_gripper_command_and_feedback(sim_and_sdk):
    _, sdk = sim_and_sdk
    sdk.GripperCtrl(50_000, 1000, 0x01, 0)  # 50 mm
    assert wait_until(lambda: sdk.GetArmGripperMsgs().gripper_state.grippers_angle == 50_000)
    assert sdk.GetArmGripperMsgs().gripper_state.status_code & (1 << 6)  # enabled bit


def test_sdk_gripper_stalls_on_an_object_and_reports_its_effort(sim_and_sdk):
    """0x159 sets the opening and the effort; an object between the fingers stops the
    closing, and 0x2A8 then reports the commanded effort (a grasp, not a fault)."""
    sim, sdk = sim_and_sdk

    def gripper():
        state = sdk.GetArmGripperMsgs().gripper_state
        return state.grippers_angle, state.grippers_effort

    sdk.GripperCtrl(90_000, 1000, 0x01, 0)  # beyond the 70 mm range: clamped to it
    assert wait_until(lambda: gripper() == (70_000, 0))
    samples = []
    sim.set_gripper_obstacle(0.03)  # a 3 cm object between the fingers
    sdk.GripperCtrl(0, 1500, 0x01, 0)
    start = time.monotonic()
    while time.monotonic() - start < 1.0:
        samples.append((time.monotonic(), *gripper()))
        time.sleep(0.005)
    times, angles, efforts = (np.array(x, dtype=float) for x in zip(*samples))
    assert angles[-1] == 30_000 and efforts[-1] == 1500  # stalled on the object, squeezing
    assert angles.min() >= 30_000  # never through it
    # no effort while moving freely (within 0.2 mm of the object it counts as touching)
    assert efforts[angles > 30_200].max() == 0
    closing = (angles > 31_000) & (angles < 69_000)
    speed = np.diff(angles[closing]) / np.diff(times[closing]) / 1e6
    assert np.median(-speed) < sim.params.gripper_speed_m_s * 1.5  # at the gripper's speed
    sdk.GripperCtrl(60_000, 1500, 0x01, 0)  # opening releases the object
    assert wait_until(lambda: gripper() == (60_000, 0))
    sim.set_gripper_obstacle(0.0)
    sdk.GripperCtrl(0, 1500, 0x01, 0)  # nothing in between: it closes fully, no effort
    assert wait_until(lambda: gripper() == (0, 0))
    with pytest.raises(ValueError, match="finite opening"):
        sim.set_gripper_obstacle(float("nan"))


def test_sdk_sees_angle_limit_status_and_estop(sim_and_sdk):
    _, sdk = sim_and_sdk
    sdk.EnableArm(7)
    sdk.MotionCtrl_2(0x01, 0x01, 100, 0x00)
    sdk.JointCtrl(0, 0, -200_000, 0, 0, 0)  # joint3 limit is -170 degrees
    assert wait_until(lambda: sdk.GetArmStatus().arm_status.arm_status == 0x04)
    status = sdk.GetArmStatus().arm_status
    assert status.err_status.joint_3_angle_limit
    assert not status.err_status.joint_1_angle_limit
    sdk.JointCtrl(0, 30_000, -30_000, 0, 0, 0)
    assert wait_until(lambda: sdk.GetArmStatus().arm_status.arm_status == 0x00)
    sdk.EmergencyStop(0x01)
    assert wait_until(lambda: sdk.GetArmStatus().arm_status.arm_status == 0x01)
    sdk.EmergencyStop(0x02)
    assert wait_until(lambda: sdk.GetArmStatus().arm_status.arm_status == 0x00)


def test_sdk_limit_query_and_firmware_version(sim_and_sdk):
    _, sdk = sim_and_sdk
    # ConnectPort() already sent the 0x472 queries; the SDK keeps the last reply per slot
    assert wait_until(
        lambda: (
            sdk.GetAllMotorAngleLimitMaxSpd().all_motor_angle_limit_max_spd.motor[6].motor_num == 6
        )
    )
    m6 = sdk.GetAllMotorAngleLimitMaxSpd().all_motor_angle_limit_max_spd.motor[6]
    assert (m6.max_angle_limit, m6.min_angle_limit, m6.max_joint_spd) == (1200, -1200, 3000)
    assert wait_until(lambda: sdk.GetPiperFirmwareVersion() == "S-V1.6-3")
    sdk.SearchMotorMaxAngleSpdAccLimit(2, 0x02)
    assert wait_until(
        lambda: sdk.GetCurrentMotorMaxAccLimit().current_motor_max_acc_limit.max_joint_acc == 5000
    )


def test_driver_si_units_limits_and_commands(arm):
    sim, driver = arm
    state = driver.read_state()
    assert np.allclose(state.positions, START, atol=1e-5)
    assert state.ok and not state.enabled
    limits = driver.firmware_limits()
    for j, name in enumerate(("joint1", "joint2", "joint3", "joint4", "joint5", "joint6")):
        lo, hi, vmax = limits[name]
        assert lo == pytest.approx(CFG.position_lower[j], abs=1e-3)
        assert hi == pytest.approx(CFG.position_upper[j], abs=1e-3)
        assert vmax == pytest.approx(3.0)
    assert driver.firmware_version() == "S-V1.6-3"
    driver.enable()
    assert driver.read_state().enabled
    time.sleep(0.05)
    assert sim.gripper == pytest.approx(START[6])  # enabling did not move the gripper
    target = np.array([0.0, 0.6, -0.6, 0.0, 0.0, 0.0, 0.05])
    start = time.monotonic()
    while time.monotonic() < start + 3.0:
        driver.command(target)
        if np.abs(driver.read_state().positions - target).max() < 1e-4:
            record("reaching the target (s)", time.monotonic() - start, 3.0)
            break
        time.sleep(0.005)
    assert np.allclose(driver.read_state().positions, target, atol=1e-4)
    assert np.allclose(sim.position, target[:6], atol=1e-4)
    assert driver.read_state().gripper_effort_nm == 0.0
    sim.set_gripper_obstacle(0.03)  # an object: closing on it stalls with the set effort
    closed = target.copy()
    closed[6] = 0.0
    driver.command(closed)

    def stalled_on_it() -> bool:
        state = driver.read_state()
        return state.gripper_effort_nm == pytest.approx(1.0) and state.positions[6] == 0.03

    assert wait_until(stalled_on_it)
    assert driver.read_state().ok  # a stalled gripper is not a fault
    with pytest.raises(ArmError, match="7 finite numbers"):
        driver.command(np.array([np.nan] * 7))


def test_driver_decodes_faults_and_feedback_loss(arm):
    sim, driver = arm
    driver.enable()
    driver.command(np.array([0.0, 0.5, -3.2, 0.0, 0.0, 0.0, 0.0]))  # joint3 out of range
    assert wait_until(lambda: not driver.read_state().ok)
    assert driver.read_state().faults == ("arm_status 4 (target angle exceeds limit) (joint3)",)
    driver.emergency_stop()
    assert wait_until(lambda: "emergency stop" in " ".join(driver.read_state().faults))
    driver.resume()
    assert wait_until(lambda: driver.read_state().ok)
    sim.feedback_enabled = False
    assert wait_until(lambda: any("no joint feedback" in f for f in driver.read_state().faults))
    sim.feedback_enabled = True
    assert wait_until(lambda: driver.read_state().ok)


def test_reads_that_are_always_late_still_see_a_dead_link(arm):
    """Every read more than half the feedback timeout after the last one looks like a
    process stall; a silent link is reported anyway, one timeout after the first."""
    sim, driver = arm
    timeout = driver.settings.feedback_timeout_s
    assert driver.read_state().ok
    sim.feedback_enabled = False
    faulted_after = None
    start = time.monotonic()
    while time.monotonic() - start < 20 * timeout:
        time.sleep(0.7 * timeout)
        if any("no joint feedback" in f for f in driver.read_state().faults):
            faulted_after = time.monotonic() - start
            break
    assert faulted_after is not None, "a dead link hidden by slow reads"
    record("fault after the link went silent (s)", faulted_after, 20 * timeout)
    assert driver.stalls >= 1


_STALL_CHILD = """
import json, sys, time
import numpy as np
from dream_vla_ros.control.config import load_safety_config
from dream_vla_ros.robot.piper import PiperArm, PiperSettings
from dream_vla_ros.robot.piper_sim import FirmwareParams, PiperFirmwareSim

name, timeout, seconds = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
start = np.array([0.0, 0.5, -0.5, 0.0, 0.3, 0.0, 0.02])
sim = PiperFirmwareSim(name, FirmwareParams.from_safety_config(load_safety_config(None)), start)
sim.start()
driver = PiperArm(PiperSettings(can_name=name, bustype="virtual", feedback_timeout_s=timeout))
driver.connect()
print("ready", flush=True)
faults, end = set(), time.monotonic() + seconds
while time.monotonic() < end:  # the control loop's reads
    faults.update(driver.read_state().faults)
    time.sleep(0.005)
print(json.dumps({"faults": sorted(faults), "stalls": driver.stalls}), flush=True)
driver.close()
sim.stop()
"""


def test_a_stalled_process_is_not_a_lost_can_link():
    """The whole process (controller loop, SDK reader, in-process simulator) stopped
    for 4 feedback timeouts by SIGSTOP, as a starved host does: the silence clock
    restarts when it runs again, so no feedback fault; the stall is counted."""
    import json
    import signal
    import subprocess
    import sys

    timeout = 0.2
    child = subprocess.Popen(
        [sys.executable, "-c", _STALL_CHILD, f"stall-{next(_names)}", str(timeout), "3.0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline().strip() == "ready"
        time.sleep(0.5)
        child.send_signal(signal.SIGSTOP)
        time.sleep(4 * timeout)
        child.send_signal(signal.SIGCONT)
        report = json.loads(child.stdout.readline())
        assert child.wait(timeout=30) == 0
    finally:
        child.kill()
        child.wait()
    assert report["faults"] == [], report
    assert report["stalls"] >= 1, report


def test_joint_reads_never_mix_two_feedback_cycles(arm):
    """Joints 2 and 3 move by the same profile, so every pose the arm has keeps their
    difference. The simulator thread is starved again and again (it then catches up
    and streams the new pose in three frames) while the driver reads as fast as it can:
    no read may combine joints of two cycles. The interpreter switches threads every
    10 us here (5 ms by default) so that reads fall between the frames of a cycle
    often: the SDK's own joint message is then off by 5-90 mrad in every run."""
    import sys
    import threading

    sim, driver = arm
    driver.enable()
    stop = threading.Event()
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)

    def starve() -> None:
        while not stop.is_set():
            sim.starve(0.15)
            time.sleep(0.05)

    starver = threading.Thread(target=starve, daemon=True)
    starver.start()
    base = np.array(START)
    worst, reads = 0.0, 0
    try:
        for k in range(4):
            shift = 0.5 if k % 2 == 0 else 0.0
            driver.command(base + np.r_[0.0, shift, shift, 0.0, 0.0, 0.0, 0.0])
            end = time.monotonic() + 1.2
            while time.monotonic() < end:
                q = driver.read_state().positions
                worst = max(worst, abs((q[1] - q[2]) - (base[1] - base[2])))
                reads += 1
            assert abs(q[1] - (base[1] + shift)) < 0.02, "the arm did not follow the command"
    finally:
        stop.set()
        starver.join()
        sys.setswitchinterval(switch)
    assert reads > 1000
    assert worst < 3e-5, f"a read mixed two cycles: joint2 - joint3 off by {worst:.4f} rad"


def test_driver_enable_timeout_and_missing_arm():
    name = f"absent-{next(_names)}"
    driver = PiperArm(PiperSettings(can_name=name, bustype="virtual", connect_timeout_s=0.2))
    with pytest.raises(ArmError, match="no feedback from a PiPER"):
        driver.connect()
    driver.close()


def test_driver_enable_times_out_when_a_motor_refuses():
    name = f"stuck-{next(_names)}"
    stuck = PiperFirmwareSim(name, FirmwareParams.from_safety_config(CFG), START).start()
    original = stuck._handle

    def ignore_enable(frame):
        original(frame)
        stuck.enabled[3] = False

    stuck._handle = ignore_enable
    driver = PiperArm(PiperSettings(can_name=name, bustype="virtual", enable_timeout_s=0.3))
    try:
        driver.connect()
        with pytest.raises(ArmError, match="did not enable joint4"):
            driver.enable()
    finally:
        driver.close()
        stuck.stop()


def test_fault_decoders():
    assert decode_status_faults(0, 0) == []
    assert decode_status_faults(4, (1 << 8) | (1 << 13)) == [
        "arm_status 4 (target angle exceeds limit) (joint1, joint6)"
    ]
    assert decode_status_faults(0, 0b10) == ["joint communication error on joint2"]
    assert decode_driver_faults(2, 0b1000_0100) == [
        "joint2 driver: driver over-current",
        "joint2 driver: stall protection triggered",
    ]
    assert decode_driver_faults(1, 1 << 6) == []  # the enable bit is not a fault


def test_joints_stop_at_their_hard_limits_when_a_catch_up_overshoots():
    """After a stall the servo catches up at full speed and can overshoot its target;
    the joint still stops at the range the firmware accepts targets in (a joint held
    beyond it would make every later hold command a limit fault)."""
    params = FirmwareParams.from_safety_config(CFG)
    upper = params.upper_rad[4]
    sim = PiperFirmwareSim(f"stop-{next(_names)}", params, [0, 1.5, -1.0, 0, upper - 0.1, 0, 0])
    try:
        sim.enabled[:] = True
        sim.velocity[4] = params.max_speed_rad_s  # arriving at full speed
        sim.target[4] = upper  # 0.1 rad ahead: braking from 3 rad/s needs 0.9 rad
        peak = -np.inf
        for _ in range(400):
            sim._step(0.005)
            peak = max(peak, sim.position[4])
        assert peak <= upper + 1e-6
        assert peak > upper - 1e-3  # it did run into the stop
        assert abs(sim.position[4] - upper) < 1e-3 and abs(sim.velocity[4]) < 1e-6
    finally:
        sim._bus.shutdown()


def test_a_gripper_that_learns_of_the_object_late_is_pushed_back_to_it():
    """The world reports the object a few milliseconds after the fingers met it: the
    gripper that closed past its width is pushed back to it, and squeezes."""
    grip = SimGripper(0.07, 0.1, 0.06, 0.0, effort_command_nm=2.0, enabled=True)
    for _ in range(70):  # 0.7 s at 0.1 m/s: fully closed, nothing reported
        grip.step(0.01)
    assert grip.position == 0.0 and grip.effort_nm == 0.0
    grip.obstacle_m = 0.03
    grip.step(0.01)
    assert grip.position == 0.03 and grip.effort_nm == 2.0
    grip.target = 0.05  # opening: free again, the report notwithstanding
    grip.step(0.01)
    assert grip.position == pytest.approx(0.031) and grip.effort_nm == 0.0


def test_a_gripper_squeezing_an_object_keeps_its_effort_while_the_object_shifts():
    """A held cube that shifts between the fingers changes the width the world reports
    (narrower, or for a moment none): the gripper follows it and keeps squeezing;
    it lets go when the target opens past the fingers, and stops squeezing when the
    object is gone and the fingers reach the target."""
    grip = SimGripper(0.07, 0.1, 0.04, 0.0, effort_command_nm=1.0, enabled=True)
    grip.obstacle_m = 0.03
    for _ in range(20):
        grip.step(0.005)
    assert grip.position == 0.03 and grip.effort_nm == 1.0
    grip.obstacle_m = 0.029  # the cube turned a little: 1 mm narrower
    efforts = []
    for _ in range(4):
        grip.step(0.005)
        efforts.append(grip.effort_nm)
    assert efforts == [1.0] * 4 and grip.position == pytest.approx(0.029)
    grip.obstacle_m = 0.0  # a contact lost for a tick
    grip.step(0.005)
    assert grip.effort_nm == 1.0 and grip.position == pytest.approx(0.0285)
    grip.obstacle_m = 0.029  # back: pushed out to it, still squeezing
    grip.step(0.005)
    assert grip.position == pytest.approx(0.029) and grip.effort_nm == 1.0
    grip.target = 0.05  # opening: released at once
    grip.step(0.005)
    assert grip.effort_nm == 0.0 and grip.position > 0.029
    # the object gone while squeezing: the fingers close onto the target, then rest
    grip.target, grip.obstacle_m = 0.0, 0.03
    for _ in range(10):
        grip.step(0.005)
    assert grip.effort_nm == 1.0
    grip.obstacle_m = 0.0
    for _ in range(100):
        grip.step(0.005)
    assert grip.position == 0.0 and grip.effort_nm == 0.0 and not grip.holding
