"""ros2 launch dream_vla_ros collect.launch.py [output_dir:=episodes] [instruction:=...]

Demonstrations in simulation: simulated PiPER, schematic cameras, scripted teleop and
the recorder. Same graph as `dream-vla launch collect`."""

from dream_vla_ros.ros.launch_description import describe


def generate_launch_description():
    return describe("collect")
