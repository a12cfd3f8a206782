#!/usr/bin/env bash
# Source ROS 2 Jazzy and the D2PPO workspace, then run the command (ros2 launch / ros2 run / bash).
set -e
source /opt/ros/jazzy/setup.bash
source /opt/d2ppo/ros2_ws/install/setup.bash
exec "$@"
