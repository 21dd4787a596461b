"""ament_python package: works with `colcon build` and with plain `pip install`."""

from pathlib import Path

from setuptools import find_packages, setup

PACKAGE = "dream_vla_ros"
HERE = Path(__file__).parent


def tree(folder: str) -> list[tuple[str, list[str]]]:
    """data_files entries that install `folder` under share/<package>/ keeping its layout."""
    entries: dict[str, list[str]] = {}
    for path in sorted((HERE / folder).rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            rel = path.relative_to(HERE)
            entries.setdefault(f"share/{PACKAGE}/{rel.parent}", []).append(str(rel))
    return list(entries.items())


setup(
    name=PACKAGE,
    version="0.1.0",
    description="Dream-VLA policy and safety-limited PiPER controller for ROS 2",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=[PACKAGE, f"{PACKAGE}.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        *tree("launch"),
        *tree("config"),
        *tree("models"),
    ],
    install_requires=[
        "numpy>=1.24",
        "pyyaml>=6",
        "python-can>=4.3",
        "piper_sdk>=0.6.2",
        "torch>=2.4",
        "transformers>=5.0",
        "safetensors>=0.4",
        "tokenizers>=0.20",
        "peft>=0.17",
        "accelerate>=1.0",
        "tqdm>=4.60",
        "pillow>=10",
        "rosbags>=0.10",
        "pyarrow>=15",
        "pandas>=2",
        "av>=12",
        "matplotlib>=3.7",
        "zstandard>=0.22",
        "mujoco>=3.1",
    ],
    zip_safe=False,
    entry_points={
        "console_scripts": [
            "dream-vla = dream_vla_ros.cli:main",
            "controller_node = dream_vla_ros.ros.controller_node:main",
            "policy_node = dream_vla_ros.ros.policy_node:main",
            "sim_camera_node = dream_vla_ros.ros.sim_camera_node:main",
            "sim_world_node = dream_vla_ros.ros.sim_world_node:main",
            "teleop_node = dream_vla_ros.ros.teleop_node:main",
            "recorder_node = dream_vla_ros.ros.recorder_node:main",
        ],
    },
)
