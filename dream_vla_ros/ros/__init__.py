"""Thin rclpy nodes and message conversions: the only place rclpy is imported."""
