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


def local_dds_env(
    base: Mapping[str, str] | None = None, domain_id: int | None = None
) -> dict[str, str]:
    """A copy of `base` (default: os.environ) with the localhost-only DDS settings.

    `domain_id`, when given, replaces ROS_DOMAIN_ID (launchers and tests pass their
    own so parallel runs never see each other).
    """
    env = dict(os.environ if base is None else base)
    if domain_id is not None:
        if not 0 <= domain_id <= 101:
            raise ValueError(f"ROS_DOMAIN_ID must be in 0..101, got {domain_id}")
        env["ROS_DOMAIN_ID"] = str(domain_id)
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
