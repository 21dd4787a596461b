"""PiPER CAN protocol facts shared by the driver and the firmware simulator.

Frame ids, unit scales and status codes of the PiPER V2 protocol (as the
vendor's piper_sdk speaks it). Integers on the wire are big-endian.
"""

from __future__ import annotations

import math

# Feedback streamed by the arm
STATUS = 0x2A1
JOINT_FEEDBACK = (0x2A5, 0x2A6, 0x2A7)  # joints 1-2, 3-4, 5-6
GRIPPER_FEEDBACK = 0x2A8
HIGH_SPEED_INFO = tuple(range(0x251, 0x257))  # per motor: speed, current, position
LOW_SPEED_INFO = tuple(range(0x261, 0x267))  # per motor: voltage, temps, status bits, current

# Commands
MOTION_CTRL_1 = 0x150  # e-stop / resume
MOTION_CTRL_2 = 0x151  # control mode, move mode, speed rate
JOINT_CTRL = (0x155, 0x156, 0x157)
GRIPPER_CTRL = 0x159
MOTOR_ENABLE = 0x471
QUERY_LIMITS = 0x472
LIMITS_REPLY = 0x473  # angle limits and max speed
ACC_LIMIT_REPLY = 0x47C
FIRMWARE = 0x4AF  # query and reply share the id

# Units on the wire
MILLIDEG_PER_RAD = 180_000.0 / math.pi  # joint angles: 0.001 degree
DECIDEG_PER_RAD = 1_800.0 / math.pi  # limit table: 0.1 degree
MICROMETRE_PER_M = 1_000_000.0  # gripper: 0.001 mm
MILLIRAD = 1000.0  # speeds 0.001 rad/s, accelerations 0.001 rad/s^2

# 0x151 byte 0
CTRL_MODE_STANDBY = 0x00
CTRL_MODE_CAN = 0x01
# 0x151 byte 1
MOVE_J = 0x01
# 0x150 byte 0
ESTOP_ENGAGE = 0x01
ESTOP_RESUME = 0x02
# 0x471 byte 1
ENABLE_FLAG = 0x02
DISABLE_FLAG = 0x01
ALL_MOTORS = 7
# 0x159 byte 6
GRIPPER_DISABLE = 0x00
GRIPPER_ENABLE = 0x01
GRIPPER_DISABLE_CLEAR = 0x02
GRIPPER_ENABLE_CLEAR = 0x03

# Motor driver status bits (0x261-0x266 byte 5, 0x2A8 byte 6)
DRIVER_BITS = {
    0: "supply voltage too low",
    1: "motor over-temperature",
    2: "driver over-current",
    3: "driver over-temperature",
    4: "collision protection triggered",
    5: "driver error",
    7: "stall protection triggered",
}
DRIVER_ENABLED_BIT = 6

# 0x2A1 byte 1
ARM_STATUS_TEXT = {
    0x00: "normal",
    0x01: "emergency stop",
    0x02: "no solution",
    0x03: "singularity",
    0x04: "target angle exceeds limit",
    0x05: "joint communication error",
    0x06: "joint brake not released",
    0x07: "collision",
    0x08: "overspeed during teach drag",
    0x09: "joint status error",
    0x0A: "other error",
    0x0B: "teach record",
    0x0C: "teach execution",
    0x0D: "teach pause",
    0x0E: "main controller over-temperature",
    0x0F: "release resistor over-temperature",
}
ARM_STATUS_NORMAL = 0x00
ARM_STATUS_ESTOP = 0x01
ARM_STATUS_ANGLE_LIMIT = 0x04
# States that are not faults while streaming joint targets
ARM_STATUS_BENIGN = {0x00}

# 0x2A1 bytes 6-7 (uint16): bits 0-5 joint communication errors, bits 8-13 angle limits
ERR_COMM_SHIFT = 0
ERR_LIMIT_SHIFT = 8


def rad_to_millideg(value: float) -> int:
    return int(round(value * MILLIDEG_PER_RAD))


def millideg_to_rad(value: int) -> float:
    return value / MILLIDEG_PER_RAD


def m_to_micrometre(value: float) -> int:
    return int(round(value * MICROMETRE_PER_M))


def micrometre_to_m(value: int) -> float:
    return value / MICROMETRE_PER_M
