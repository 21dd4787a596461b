"""Keep DDS on this machine unless the user opts out (no ROS imports).

Fast DDS's default discovery multicasts out of every network interface. Every
process this package starts (node mains, the launcher, tests, benchmarks) uses
the localhost-only profile in config/dds/localhost.xml (shared memory plus UDP
on 127.0.0.1) and ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST.

Opt out for a multi-machine deployment (e.g. the policy on a GPU host) with
`DREAM_VLA_DDS=system`: then the environment is left exactly as the user set it.

A node that is restarted after it was killed needs a DDS participant id that no
earlier process of its graph had. Fast DDS's shared-memory transport names each
reader's port after the participant id; a process killed with SIGKILL leaves its
port behind, the writers of the processes still running keep it open, and a new
participant that takes the same id may recreate the port under the same name: the
writers then push every sample into the dead one and the restarted node receives
nothing, for good (rare; docs/architecture.md has the measurements).
`write_participant_profile` writes the localhost profile with a fixed
`participantID`; the launcher gives each restart the next id of
RESTART_PARTICIPANT_IDS.

A killed process also leaves its shared-memory data segments in /dev/shm (about
17 MiB a participant). Fast DDS holds an exclusive `flock` on each segment's lock
file `<segment>_el` for as long as the participant lives; `dead_segments` finds the
segments whose lock file nobody holds (what Fast DDS's own `fastdds shm clean`
removes), and the launcher removes them when a node of its graph was killed. Port
segments (`fastdds_port*`, 52 KB) are left alone: a live participant may be taking
one over.
"""

from __future__ import annotations

import fcntl
import os
import time
import xml.etree.ElementTree as ET
from collections.abc import Mapping, MutableMapping
from pathlib import Path

from dream_vla_ros.paths import config_path

OPT_OUT_VAR = "DREAM_VLA_DDS"


def profile_path() -> str:
    return str(config_path("dds/localhost.xml"))


# With ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST rmw_fastrtps announces a participant
# to the ports of participant ids 0..31 on 127.0.0.1 (there is no multicast on the
# loopback interface): a participant with a larger id finds only the ones that find
# it. Processes that take their id automatically start at 0 and count up to the
# first free one; restarted nodes take fixed ids from the upper half.
PEER_RANGE = 32
RESTART_PARTICIPANT_IDS = range(16, PEER_RANGE)

_FASTDDS_NS = "http://www.eprosima.com"

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


def write_participant_profile(path: Path, participant_id: int) -> Path:
    """The localhost profile with the default participant's id fixed, written to
    `path` (for a restarted node: see the module docstring)."""
    if not 0 <= participant_id < PEER_RANGE:
        raise DdsError(
            f"participant id {participant_id} is outside 0..{PEER_RANGE - 1}, the ids "
            "localhost discovery probes"
        )
    ET.register_namespace("", _FASTDDS_NS)
    tree = ET.parse(profile_path())
    ns = {"f": _FASTDDS_NS}
    rtps = tree.getroot().find("f:profiles/f:participant[@is_default_profile='true']/f:rtps", ns)
    if rtps is None:
        raise DdsError(f"{profile_path()} has no default participant profile with <rtps>")
    for old in rtps.findall("f:participantID", ns):
        rtps.remove(old)
    element = ET.Element(f"{{{_FASTDDS_NS}}}participantID")
    element.text = str(participant_id)
    rtps.insert(0, element)
    path.parent.mkdir(parents=True, exist_ok=True)
    tree.write(path, encoding="UTF-8", xml_declaration=True)
    return path


def local_dds_env(
    base: Mapping[str, str] | None = None,
    domain_id: int | None = None,
    profile: Path | None = None,
) -> dict[str, str]:
    """A copy of `base` (default: os.environ) with the localhost-only DDS settings.

    `domain_id`, when given, replaces ROS_DOMAIN_ID (launchers and tests pass their
    own so parallel runs never see each other). `profile` replaces the localhost
    profile by a variant of it (`write_participant_profile`).
    """
    env = dict(os.environ if base is None else base)
    if domain_id is not None:
        env["ROS_DOMAIN_ID"] = str(parse_domain_id(domain_id))
    if env.get(OPT_OUT_VAR, "local") == "system":
        return env
    env["FASTDDS_DEFAULT_PROFILES_FILE"] = str(profile) if profile else profile_path()
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


SHM_DIR = Path("/dev/shm")
_SEGMENT_PREFIX = "fastdds_"
_LOCK_SUFFIX = "_el"


def _unlocked(lock: Path) -> bool:
    """Nobody holds `lock` (a Fast DDS segment's lock file)."""
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return True
    finally:
        os.close(fd)


def dead_segments(shm_dir: Path = SHM_DIR, min_age_s: float = 5.0) -> list[Path]:
    """Fast DDS data segments in `shm_dir` whose participant is gone: a lock file
    `<segment>_el` that nobody holds, the segment older than `min_age_s` (a segment
    being created is never taken for dead)."""
    found = []
    now = time.time()
    try:
        names = os.listdir(shm_dir)
    except OSError:
        return []
    for name in names:
        if (
            not name.startswith(_SEGMENT_PREFIX)
            or name.endswith(_LOCK_SUFFIX)
            or name.startswith(_SEGMENT_PREFIX + "port")
        ):
            continue
        segment = shm_dir / name
        try:
            old = now - segment.stat().st_mtime >= min_age_s
        except OSError:
            continue
        if old and _unlocked(shm_dir / (name + _LOCK_SUFFIX)):
            found.append(segment)
    return sorted(found)


def remove_dead_segments(shm_dir: Path = SHM_DIR, min_age_s: float = 5.0) -> int:
    """Remove the segments `dead_segments` finds and their lock files; returns the
    bytes freed."""
    freed = 0
    for segment in dead_segments(shm_dir, min_age_s):
        try:
            size = segment.stat().st_size
            segment.unlink()
        except OSError:
            continue
        freed += size
        Path(str(segment) + _LOCK_SUFFIX).unlink(missing_ok=True)
    return freed
