"""Forward kinematics of the PiPER from its modified-DH table (no ROS imports).

The table lives in config/piper.yaml (`kinematics:`), in metres and radians.
Each link transform is Rx(alpha) Tx(a) Rz(theta + offset) Tz(d) (Craig's
modified convention, as the vendor documents it). The base frame has z up.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from dream_vla_ros.control.errors import ConfigError
from dream_vla_ros.paths import config_path

_KEYS = ("dh_a_m", "dh_alpha_rad", "dh_theta_offset_rad", "dh_d_m")


@dataclass(frozen=True)
class DHChain:
    a: np.ndarray
    alpha: np.ndarray
    theta_offset: np.ndarray
    d: np.ndarray

    @classmethod
    def load(cls, path: str | Path | None = None) -> DHChain:
        src = Path(path) if path else config_path("piper.yaml")
        doc = yaml.safe_load(src.read_text()) or {}
        section = doc.get("kinematics")
        if not isinstance(section, dict):
            raise ConfigError(f"{src}: no 'kinematics' section with {list(_KEYS)}")
        values = []
        for key in _KEYS:
            row = np.asarray(section.get(key, ()), dtype=np.float64)
            if row.shape != (6,) or not np.all(np.isfinite(row)):
                raise ConfigError(f"{src}: kinematics.{key} must be 6 finite numbers")
            values.append(row)
        return cls(*values)

    def frames(self, q: np.ndarray) -> np.ndarray:
        """(7, 4, 4) poses of the base and of links 1..6 in the base frame for joints q[:6]."""
        q = np.asarray(q, dtype=np.float64)[:6]
        out = np.empty((7, 4, 4))
        out[0] = np.eye(4)
        for i in range(6):
            out[i + 1] = out[i] @ _link(
                self.alpha[i], self.a[i], q[i] + self.theta_offset[i], self.d[i]
            )
        return out

    def end_effector(self, q: np.ndarray) -> np.ndarray:
        """(4, 4) pose of the flange (link 6) in the base frame."""
        return self.frames(q)[-1]


def _link(alpha: float, a: float, theta: float, d: float) -> np.ndarray:
    ca, sa, ct, st = np.cos(alpha), np.sin(alpha), np.cos(theta), np.sin(theta)
    return np.array(
        [
            [ct, -st, 0.0, a],
            [st * ca, ct * ca, -sa, -sa * d],
            [st * sa, ct * sa, ca, ca * d],
            [0.0, 0.0, 0.0, 1.0],
        ]
    )
