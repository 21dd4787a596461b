"""ros2 launch dream_vla_ros sim_world.launch.py [checkpoint:=DIR] [task_seed:=0]

The MuJoCo world with the touch-the-cube task: simulated PiPER, sim_world cameras,
policy and controller. Same graph as `dream-vla launch sim_world`."""

from dream_vla_ros.ros.launch_description import describe


def generate_launch_description():
    return describe("sim_world")
