# syntax=docker/dockerfile:1
# Robot PC image: ROS 2 Jazzy + the D2PPO workspace (camera, teleop, recorder, inference, franka, sim and
# bringup packages), franky built for the arm's robot server version, pyrealsense2, CPU torch.
#
# Build from the repository root (docs/bringup.md, "Docker"):
#   docker build -f docker/Dockerfile.robot --build-arg FRANKA_SERVER_VERSION=5 -t d2ppo-robot .
# or: FRANKA_SERVER_VERSION=5 docker compose -f docker/compose.yaml build
FROM ros:jazzy-ros-base

# The arm's robot server version decides the libfranka inside franky (a mismatch raises
# IncompatibleVersionException at connect). franky publishes one wheel index per server version.
#   5  = Franka Emika Panda (FER), system 4.2.x, libfranka 0.9.x   <- default: this project's arm
#   10 = Franka Research 3 (FR3), system >= 5.9, libfranka 0.21 (the same wheel as on PyPI)
# Other FR3 system images use other versions (franky supports 2..10): see franky's compatibility table.
ARG FRANKA_SERVER_VERSION=5
ARG FRANKY_VERSION=2.0.0
# Same torch as requirements.txt, CPU build: the robot PC runs the 10-step sampler on its CPU.
ARG TORCH_VERSION=2.13.0
ARG PYSPACEMOUSE_VERSION=2.1.0

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PIP_BREAK_SYSTEM_PACKAGES=1 \
    PYTHONUNBUFFERED=1 \
    MUJOCO_GL=egl \
    RMW_IMPLEMENTATION=rmw_fastrtps_cpp

# libusb: pyrealsense2; libhidapi-hidraw0: pyspacemouse; GL/ffmpeg: the robosuite sim node for dry runs.
RUN apt-get update && apt-get install -y --no-install-recommends \
        python3-pip python3-colcon-common-extensions \
        ros-jazzy-rmw-fastrtps-cpp ros-jazzy-launch-ros ros-jazzy-std-srvs ros-jazzy-diagnostic-msgs \
        libusb-1.0-0 libhidapi-hidraw0 libosmesa6 libegl1 libgl1-mesa-dri ffmpeg \
    && rm -rf /var/lib/apt/lists/*

# Python packages go into the image's system Python (3.12, the one ROS Jazzy's rclpy is built for), so the
# console scripts colcon installs find them. ROS itself comes from apt, not the ros-kilted-* wheels that
# requirements.txt uses for pip-only environments; franky-sim is a CI stand-in for the arm.
WORKDIR /opt/d2ppo
COPY requirements.txt /opt/d2ppo/requirements.txt
RUN pip install "torch==${TORCH_VERSION}" --index-url https://download.pytorch.org/whl/cpu \
    && grep -v -E '^(ros-kilted-|franky-|torch)' requirements.txt > /tmp/requirements-robot.txt \
    && pip install -r /tmp/requirements-robot.txt \
    && pip install "pyspacemouse==${PYSPACEMOUSE_VERSION}"

# franky for this arm: the wheel index of its robot server version (local version label +libfranka.X).
RUN pip install "franky-control==${FRANKY_VERSION}" \
        --extra-index-url "https://timschneider42.github.io/franky/whl/by-robot-server-version/${FRANKA_SERVER_VERSION}/" \
    && python3 -c "import importlib.metadata as m; print('franky-control', m.version('franky-control'))" \
    && echo "${FRANKA_SERVER_VERSION}" > /opt/d2ppo/franka_server_version

# The training package (policy loader, observation builder, HDF5 writer) used by the nodes.
COPY training /opt/d2ppo/training
RUN pip install --no-deps /opt/d2ppo/training

# The ROS 2 workspace.
COPY ros2_ws/src /opt/d2ppo/ros2_ws/src
RUN . /opt/ros/jazzy/setup.sh \
    && cd /opt/d2ppo/ros2_ws \
    && colcon build --merge-install --event-handlers console_cohesion+ \
    && rm -rf build log

# Deployment profiles (cameras, safety, teleop, recorder, ...); compose mounts the host's copy over them
# so they can be edited without a rebuild. Policies and data are mounted too (docker/compose.yaml).
COPY launch /opt/d2ppo/launch
ENV D2PPO_LAUNCH_DIR=/opt/d2ppo/launch

COPY docker/robot_entrypoint.sh /robot_entrypoint.sh
ENTRYPOINT ["/robot_entrypoint.sh"]
CMD ["bash"]
