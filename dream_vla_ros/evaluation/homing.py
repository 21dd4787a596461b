"""Bringing the arm of a running graph home between episodes, and getting a faulted
controller running again (a starved host can trip its tracking or feedback
timeouts, docs/controller.md)."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from dream_vla_ros.control.interpolation import minimum_jerk
from dream_vla_ros.evaluation.driver import (
    CONTROLLER_STATUS,
    GraphDriver,
    GraphError,
    at_pose,
    controller_mode,
    faulted,
)
from dream_vla_ros.sim.task import HOME

HOME_TOLERANCE_RAD = 0.03


def at_home(client: GraphDriver) -> bool:
    return at_pose(client, HOME, HOME_TOLERANCE_RAD)


def where(client: GraphDriver) -> str:
    """What a homing timeout reports: the measured joints and the controller's mode."""
    q = client.measured()
    mode = client.status(CONTROLLER_STATUS).get("mode", "?")
    shown = None if q is None else np.round(q, 3).tolist()
    return f"the arm to return home (at {shown}, controller {mode})"


def recover_controller(client: GraphDriver, log: Callable[[str], None], attempts: int = 5) -> bool:
    """Reset a faulted controller and enable it again; True when it had to. A reset the
    arm refuses (it still reports the fault), or a controller that faults again before
    it reports running, is retried for a few attempts."""
    mode = controller_mode(client)
    if mode == "running":
        return False
    log(f"controller in {mode} ({client.status(CONTROLLER_STATUS).get('message')}): reset")
    for attempt in range(attempts):
        last = attempt == attempts - 1
        ok, message = client.trigger("/controller/reset_fault", check=False)
        if ok or "no fault" in message:  # or it was only disabled
            ok, message = client.trigger("/controller/enable", check=False)
        if not ok:
            if last:
                raise GraphError(f"the controller did not recover: {message}")
            log(f"controller refused to recover ({message}); retrying")
            time.sleep(1.0)
            continue
        # Judge by reports published after the enable: the second one to arrive
        # from now on was certainly sent after the reply (one may be in flight).
        wanted = client.diagnostics_count(CONTROLLER_STATUS) + 2

        def reported(wanted: int = wanted) -> bool:
            return client.diagnostics_count(CONTROLLER_STATUS) >= wanted

        client.wait(reported, 15, "two /diagnostics reports from the controller after its enable")
        if controller_mode(client) == "running":
            return True
        status = client.status(CONTROLLER_STATUS)
        if last:
            raise GraphError(
                f"the controller faulted again after {attempts} resets: "
                f"{status.get('mode')} ({status.get('message')})"
            )
        log(f"controller in {status.get('mode')} again ({status.get('message')}); retrying")
    raise GraphError(f"no reset attempted (attempts={attempts})")


def home_path(
    start: np.ndarray, elapsed_s: float, seconds: float, dt: float
) -> tuple[np.ndarray, np.ndarray]:
    """The rest of a minimum-jerk path from `start` to HOME that lasts `seconds`, seen
    `elapsed_s` after it began: (times from now (n,), positions (n, 7)). At least one
    point (home): after a late wake-up past the path's end the chunk would otherwise
    be empty, and the controller refuses an empty chunk."""
    n = max(1, int((seconds - elapsed_s) / dt) + 1)
    times = elapsed_s + np.arange(1, n + 1) * dt
    s = minimum_jerk(np.clip(times / seconds, 0.0, 1.0))[:, None]  # (n, 1)
    return times - elapsed_s, start + s * (HOME - start)  # (n,), (n, 7)


def home_duration_s(start: np.ndarray, peak_speed: float) -> float:
    """A minimum-jerk path of distance d and duration T peaks at 1.875 d / T."""
    distance = float(np.abs(HOME[:6] - start[:6]).max())
    return max(1.0, 1.875 * distance / peak_speed)


def stream_path_home(client: GraphDriver, peak_speed: float, dt: float) -> None:
    """One minimum-jerk path home (peak joint speed `peak_speed` rad/s), streamed as
    chunks every 0.2 s: the controller holds when no chunk has arrived for its chunk
    timeout (0.5 s), whatever the last one's horizon."""
    q = client.measured()
    if q is None:
        raise GraphError("no /joint_states from the controller")
    seconds = home_duration_s(q, peak_speed)
    start = time.monotonic()
    while True:
        elapsed = time.monotonic() - start
        _, positions = home_path(q, elapsed, seconds, dt)
        client.send_chunk(client.now(), positions, dt)
        if elapsed >= seconds:
            break
        time.sleep(0.2)


def go_home(client: GraphDriver, peak_speed: float = 0.8, dt: float = 0.05, tries: int = 3) -> None:
    """Bring the arm home along a streamed path. A host stall longer than the chunk
    timeout leaves the arm held short of home (seen: 0.15 rad on joint1), so an arm
    not home 3 s after its path gets a new path from where it is (`tries` in all)."""
    for attempt in range(tries):
        stream_path_home(client, peak_speed, dt)
        last = attempt == tries - 1
        try:
            client.wait(
                lambda: at_home(client) or faulted(client),
                30 if last else 3,
                lambda: where(client),
            )
            return
        except GraphError:
            if last:
                raise


def home(
    client: GraphDriver,
    log: Callable[[str], None],
    move: Callable[[], None] | None = None,
    attempts: int = 3,
    before_reset: Callable[[], None] | None = None,
) -> int:
    """Bring the arm home with `move` (default: `go_home`); a controller fault on the
    way (a host stall) is reset and the move restarted. `before_reset` runs before a
    reset: it must stop whatever streams chunks (a re-enabled controller would follow
    a stale stream at once). Returns how many resets it took."""
    resets = 0
    for _ in range(attempts):
        if before_reset is not None and controller_mode(client) != "running":
            before_reset()
        resets += recover_controller(client, log)
        (move or (lambda: go_home(client)))()
        if at_home(client) and not faulted(client):
            return resets
    raise GraphError(f"gave up after {attempts} attempts waiting for {where(client)}")
