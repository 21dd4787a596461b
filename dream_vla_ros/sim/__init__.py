"""Simulated worlds (no ROS): the MuJoCo world with its front and wrist cameras, the
touch-the-cube task (layouts, success, the scripted expert), and the schematic
numpy renderer of the `sim` graph."""
