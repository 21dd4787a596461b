"""Arm interface, the PiPER driver over piper_sdk and the CAN-level PiPER simulator."""

from dream_vla_ros.robot.arm import Arm, ArmError, ArmState
from dream_vla_ros.robot.piper import PiperArm, PiperSettings
from dream_vla_ros.robot.piper_sim import FirmwareParams, PiperFirmwareSim

__all__ = [
    "Arm",
    "ArmError",
    "ArmState",
    "FirmwareParams",
    "PiperArm",
    "PiperFirmwareSim",
    "PiperSettings",
]
