"""ros2 launch dream_vla_ros collect_piper.launch.py can_name:=can0 leader_can_name:=can1

Demonstrations on a real PiPER: leader arm -> teleop -> controller (follower, all safety
limits) and the recorder. Same graph as `dream-vla launch collect_piper`."""

from dream_vla_ros.ros.launch_description import describe


def generate_launch_description():
    return describe("collect_piper")
