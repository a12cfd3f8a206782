from setuptools import find_packages, setup

package_name = "d2ppo_franka"

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
    description="Franka controller node executing D2PPO action chunks through franky",
    license="MIT",
    entry_points={"console_scripts": ["franka_node = d2ppo_franka.franka_node:main"]},
)
