"""ros2 launch dream_vla_ros collect_world.launch.py [output_dir:=episodes] [task_seed:=0]

Touch-the-cube demonstrations in the MuJoCo world: simulated PiPER, sim_world
cameras, the scripted expert (teleop source touch_expert) and the recorder. Same
graph as `dream-vla launch collect_world`."""

from dream_vla_ros.ros.launch_description import describe


def generate_launch_description():
    return describe("collect_world")
