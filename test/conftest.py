"""Test fixtures. Importing this sets the localhost-only DDS environment for the
whole run (and for every child process) before anything can start rclpy."""

from __future__ import annotations

import os

from dream_vla_ros.dds import apply_local_dds, domain_id_for

# One ROS_DOMAIN_ID per test run, so concurrent runs never see each other.
apply_local_dds(domain_id=domain_id_for())
os.environ.setdefault("RCUTILS_LOGGING_BUFFERED_STREAM", "0")
