"""Static checks of the Docker images and compose file (they cannot be built here): every file they copy
or run exists, versions agree with requirements.txt, and the robot services get realtime and host network."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
DOCKERFILES = ("Dockerfile.robot", "Dockerfile.train")
ROBOT_SERVICES = ("robot", "cameras", "franka", "recorder", "teleop")


def _compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def _instructions(dockerfile: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (DOCKER / dockerfile).read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _requirement_pin(name: str) -> str:
    for line in (REPO / "requirements.txt").read_text().splitlines():
        m = re.match(rf"^{re.escape(name)}==(\S+)", line.strip())
        if m:
            return m.group(1)
    raise AssertionError(f"requirements.txt does not pin {name}")


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_dockerfile_copies_only_files_that_exist(dockerfile):
    copies = [args for word, args in _instructions(dockerfile) if word == "COPY"]
    assert copies, f"{dockerfile} copies nothing"
    for args in copies:
        parts = [p for p in args.split() if not p.startswith("--")]
        for src in parts[:-1]:
            assert (REPO / src).exists(), f"{dockerfile}: COPY {src}: no such file in the repository"


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_dockerfile_pins_the_torch_of_requirements_txt(dockerfile):
    args = dict(a.split("=", 1) for w, a in _instructions(dockerfile) if w == "ARG" and "=" in a)
    assert args.get("TORCH_VERSION") == _requirement_pin("torch")
    assert "requirements.txt" in (DOCKER / dockerfile).read_text()


def test_robot_image_picks_franky_by_robot_server_version_with_the_panda_as_default():
    instructions = _instructions("Dockerfile.robot")
    assert instructions[0] == ("FROM", "ros:jazzy-ros-base")
    args = dict(a.split("=", 1) for w, a in instructions if w == "ARG" and "=" in a)
    assert args["FRANKA_SERVER_VERSION"] == "5"
    assert args["FRANKY_VERSION"] == _requirement_pin("franky-control")
    runs = " ".join(a for w, a in instructions if w == "RUN")
    assert "by-robot-server-version/${FRANKA_SERVER_VERSION}/" in runs
    assert "colcon build" in runs and "pyrealsense2" in (REPO / "requirements.txt").read_text()
    entrypoint = DOCKER / "robot_entrypoint.sh"
    assert os.access(entrypoint, os.X_OK) and "install/setup.bash" in entrypoint.read_text()


def test_compose_gives_robot_services_host_network_realtime_and_memlock():
    services = _compose()["services"]
    for name in ROBOT_SERVICES:
        s = services[name]
        assert s["network_mode"] == "host", name
        assert s["ulimits"] == {"rtprio": 99, "memlock": -1}, name
        assert "SYS_NICE" in s["cap_add"], name
        assert s["build"]["dockerfile"] == "docker/Dockerfile.robot"
    for name in ("robot", "cameras"):
        assert "/dev/bus/usb:/dev/bus/usb" in services[name]["volumes"]
        assert "c 189:* rmw" in services[name]["device_cgroup_rules"]
    assert services["teleop"]["devices"] and services["teleop"]["tty"]
    for s in services.values():
        assert (DOCKER / s["build"]["context"] / s["build"]["dockerfile"]).resolve().is_file()


def test_compose_commands_name_existing_executables_and_parameter_files():
    for name, s in _compose()["services"].items():
        command = " ".join(s.get("command", "").split()) if isinstance(s.get("command"), str) else ""
        for pkg, exe in re.findall(r"ros2 run (\S+) (\S+)", command):
            setup = REPO / "ros2_ws" / "src" / pkg / "setup.py"
            assert setup.is_file() and f"{exe} = " in setup.read_text(), f"{name}: {pkg}/{exe} not installed"
        for pkg, launch in re.findall(r"ros2 launch (\S+) (\S+)", command):
            assert (REPO / "ros2_ws" / "src" / pkg / "launch" / launch).is_file(), f"{name}: {launch} missing"
        for f in re.findall(r"/opt/d2ppo/launch/(\S+\.yaml)", command):
            assert (REPO / "launch" / f).is_file(), f"{name}: launch/{f} missing"
