"""Dream-VLA on ROS 2: policy, safety-limited PiPER controller, data and finetuning."""

__version__ = "0.1.0"
