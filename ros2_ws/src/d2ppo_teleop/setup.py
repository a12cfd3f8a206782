from setuptools import find_packages, setup

package_name = "d2ppo_teleop"

setup(
    name=package_name,
    version="0.1.0",
    packages=find_packages(exclude=["test", "tests"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
    ],
    install_requires=["setuptools", "numpy"],
    zip_safe=True,
    maintainer="D2PPO maintainers",
    maintainer_email="d2ppo@example.com",
    description="SpaceMouse / keyboard / scripted teleoperation publishing 1-step action chunks (normalised OSC_POSE deltas) on /policy/action_chunk, so the controller's executor and safety envelope are the only path to the arm.",
    license="MIT",
    entry_points={"console_scripts": ["teleop_node = d2ppo_teleop.teleop_node:main"]},
)
