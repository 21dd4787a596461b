"""Thin rclpy nodes, their parameter tables, message conversions, the GraphClient that
tools and tests drive a graph with, and the bag player: the only place rclpy is
imported."""
