"""Test fixtures. Importing this sets the localhost-only DDS environment for the
whole run (and for every child process) before anything can start rclpy."""

from __future__ import annotations

import os
import time

import pytest

from dream_vla_ros.dds import apply_local_dds, domain_id_for

# One ROS_DOMAIN_ID per test run, so concurrent runs never see each other.
apply_local_dds(domain_id=domain_id_for())
os.environ.setdefault("RCUTILS_LOGGING_BUFFERED_STREAM", "0")


def pytest_configure(config) -> None:
    """With DREAM_VLA_MARGINS set (see test/margins.py), every deadline-bounded wait
    and every subprocess run with a timeout is recorded with the time it took."""
    if not os.environ.get("DREAM_VLA_MARGINS"):
        return
    import subprocess
    import sys
    import time

    from margins import record

    from dream_vla_ros.ros import client

    wait_until, run = client.wait_until, subprocess.run

    def timed_wait(predicate, timeout_s, what, *args, **kwargs):
        start = time.monotonic()
        wait_until(predicate, timeout_s, what, *args, **kwargs)
        label = what if isinstance(what, str) else f"line {_test_line()}"
        record(f"wait: {label} (s)", time.monotonic() - start, timeout_s)

    def timed_run(*args, **kwargs):
        start = time.monotonic()
        result = run(*args, **kwargs)
        if kwargs.get("timeout"):
            command = args[0] if args else kwargs.get("args")
            words = command if isinstance(command, list | tuple) else str(command).split()
            shown = " ".join([str(w)[:40] for w in words if "/" not in str(w)][:5])
            shown = " ".join(shown.split())
            record(f"subprocess: {shown} (s)", time.monotonic() - start, kwargs["timeout"])
        return result

    def _test_line() -> int:
        frame = sys._getframe(2)
        while frame is not None and not frame.f_code.co_filename.endswith(".py"):
            frame = frame.f_back
        while frame is not None and "/test_" not in frame.f_code.co_filename:
            frame = frame.f_back
        return frame.f_lineno if frame is not None else 0

    client.wait_until = timed_wait
    subprocess.run = timed_run


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    """With DREAM_VLA_MARGINS set: the test's own duration against its pytest-timeout
    ceiling (pyproject.toml's, or its @pytest.mark.timeout)."""
    start = time.monotonic()
    try:
        return (yield)
    finally:
        if os.environ.get("DREAM_VLA_MARGINS"):
            from margins import record

            marker = item.get_closest_marker("timeout")
            limit = marker.args[0] if marker and marker.args else item.config.getini("timeout")
            if limit:
                record("test duration (s)", time.monotonic() - start, float(limit))
