"""Recorded data (no ROS): the episode format (MCAP bags with crash recovery), rosbag2
reading, image codecs, LeRobot v2.1/v3.0 datasets (build and read), video, and the
replay schedule of `dream-vla play`."""
