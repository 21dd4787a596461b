"""Where the package's data folders (config/, launch/, models/) live.

Works from a source checkout or editable install (folders beside the package)
and from an installed package (`share/dream_vla_ros/`, as colcon and pip lay it
out), without importing ROS.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

PACKAGE = "dream_vla_ros"


def share_dir() -> Path:
    """The folder that holds config/, launch/ and models/."""
    source_root = Path(__file__).resolve().parent.parent
    if (source_root / "config").is_dir() and (source_root / "package.xml").is_file():
        return source_root
    candidates = [Path(sys.prefix) / "share" / PACKAGE]
    for prefix in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep):
        if prefix:
            candidates.append(Path(prefix) / "share" / PACKAGE)
    for candidate in candidates:
        if (candidate / "config").is_dir():
            return candidate
    raise FileNotFoundError(
        f"cannot find the {PACKAGE} share folder (looked in {source_root} and "
        f"{', '.join(str(c) for c in candidates)}); reinstall the package"
    )


def config_path(name: str) -> Path:
    """A file under config/, e.g. config_path('piper.yaml')."""
    return share_dir() / "config" / name


def model_path(name: str) -> Path:
    """A checkpoint folder under models/, e.g. model_path('touch_tiny')."""
    return share_dir() / "models" / name
