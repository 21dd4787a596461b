"""ros2 launch dream_vla_ros bringup.launch.py checkpoint:=DIR [can_name:=can0] ...

Real PiPER on socketcan (controller with arm.backend piper) and the policy on
your camera topics. Same graph as `dream-vla launch bringup`."""

from dream_vla_ros.ros.launch_description import describe


def generate_launch_description():
    return describe("bringup")
