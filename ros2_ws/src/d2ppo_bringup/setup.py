from glob import glob
from pathlib import Path

from setuptools import find_packages, setup

package_name = "d2ppo_bringup"
# The deployment profiles live in the repository's top-level launch/ folder (the files a user edits).
# An installed (non-symlink) build copies them to share/d2ppo_bringup/config; graph.launch_dir()
# prefers the repository's own folder when the package runs from the source tree.
# dds.env: the robot profile's DDS domain and discovery range (node_processes.dds_environment).
launch = Path("../../../launch")
profiles = sorted(str(p) for p in [*launch.glob("*.yaml"), *launch.glob("*.env")]) if launch.is_dir() else []

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test", "tests"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        ("share/" + package_name + "/launch", glob("launch/*.launch.py")),
        ("share/" + package_name + "/config", profiles),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    maintainer="D2PPO maintainers",
    maintainer_email="d2ppo@example.com",
    description="Launch files, the node-graph declaration and a launch-free graph runner for the D2PPO stack",
    license="MIT",
    entry_points={
        "console_scripts": [
            "d2ppo_run = d2ppo_bringup.run:main",
            "d2ppo_ctl = d2ppo_bringup.ctl:main",
            "d2ppo_bag = d2ppo_bringup.bag:main",
            "d2ppo_timeline = d2ppo_bringup.timeline:main",
        ]
    },
)
