"""Evaluating policies (no ROS): open-loop replay over bags (`eval-bag`); closed-loop
collection and evaluation through a running graph (driven through the GraphDriver
interface), homing, the collect -> train -> evaluate pipeline, the kinematic proxy,
and the pictures of results."""
