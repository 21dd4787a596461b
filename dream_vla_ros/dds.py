"""Keep DDS on this machine unless the user opts out (no ROS imports).

Fast DDS's default discovery multicasts out of every network interface. Every
process this package starts (node mains, the launcher, tests, benchmarks) uses
the localhost-only profile in config/dds/localhost.xml (shared memory plus UDP
on 127.0.0.1) and ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST.

Opt out for a multi-machine deployment (e.g. the policy on a GPU host) with
`DREAM_VLA_DDS=system`: then the environment is left exactly as the user set it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping

from dream_vla_ros.paths import config_path

OPT_OUT_VAR = "DREAM_VLA_DDS"


def profile_path() -> str:
    return str(config_path("dds/localhost.xml"))


# ROS 2 on Linux: domains whose ports fit below the ephemeral port range
DOMAIN_RANGES = ((0, 101), (215, 232))


class DdsError(ValueError):
    """An unusable DDS setting; the message names it and the fix."""


def parse_domain_id(text: str | int) -> int:
    """ROS_DOMAIN_ID as an int, or DdsError saying which values ROS 2 allows."""
    try:
        value = int(str(text).strip())
    except ValueError:
        value = -1
    if not any(lo <= value <= hi for lo, hi in DOMAIN_RANGES):
        raise DdsError(
            f"ROS_DOMAIN_ID={text} is not a domain ROS 2 can use on Linux: choose 0..101 "
            "or 215..232, or unset it and the launcher picks one"
        )
    return value


def local_dds_env(
    base: Mapping[str, str] | None = None, domain_id: int | None = None
) -> dict[str, str]:
    """A copy of `base` (default: os.environ) with the localhost-only DDS settings.

    `domain_id`, when given, replaces ROS_DOMAIN_ID (launchers and tests pass their
    own so parallel runs never see each other).
    """
    env = dict(os.environ if base is None else base)
    if domain_id is not None:
        env["ROS_DOMAIN_ID"] = str(parse_domain_id(domain_id))
    if env.get(OPT_OUT_VAR, "local") == "system":
        return env
    env["FASTDDS_DEFAULT_PROFILES_FILE"] = profile_path()
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env["RMW_IMPLEMENTATION"] = env.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
    return env


def apply_local_dds(
    environ: MutableMapping[str, str] | None = None, domain_id: int | None = None
) -> None:
    """Set the localhost-only DDS settings in this process (before rclpy.init)."""
    target = os.environ if environ is None else environ
    target.update(local_dds_env(target, domain_id))


def domain_id_for(pid: int | None = None) -> int:
    """A ROS_DOMAIN_ID in 1..100 derived from a process id (distinct for concurrent runs)."""
    return 1 + (os.getpid() if pid is None else pid) % 100
