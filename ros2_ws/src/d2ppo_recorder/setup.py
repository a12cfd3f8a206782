from setuptools import find_packages, setup

package_name = "d2ppo_recorder"

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
    description="Records teleoperated (or policy) episodes from the camera and robot topics into robomimic-format HDF5 (one durable demo per episode) that training reads without conversion.",
    license="MIT",
    entry_points={"console_scripts": ["recorder_node = d2ppo_recorder.recorder_node:main"]},
)
