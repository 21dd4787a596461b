"""ros2 launch dream_vla_ros sim.launch.py [instruction:=...] [checkpoint:=DIR]

Simulated PiPER (CAN-level firmware simulator inside the controller), schematic
cameras, policy and controller. Same graph as `dream-vla launch sim`."""

from dream_vla_ros.ros.launch_description import describe


def generate_launch_description():
    return describe("sim")
