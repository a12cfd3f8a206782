"""Static checks of the Docker images and compose file (they cannot be built here): every file they copy
or run exists, versions agree with requirements.txt, and the robot services get realtime and host network."""

from __future__ import annotations

import os
import re
import subprocess
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


# --- DDS isolation and SROS2 (docs/bringup.md, "DDS" and "SROS2") ---------------------------------------

KEYSTORE_IN_IMAGE = "/opt/d2ppo/sros2_keystore"


def _volume_sources(service: dict) -> dict[str, str]:
    """{container path: host source} of a service's short-syntax volumes (``src:dst[:mode]``)."""
    out = {}
    for v in service.get("volumes", []):
        parts = v.split(":")
        if parts[-1] in ("ro", "rw"):
            parts = parts[:-1]
        # a source may hold ':' inside ${VAR:-default}; the target is the last part
        out[parts[-1]] = ":".join(parts[:-1])
    return out


def _entrypoint(env: dict[str, str]) -> subprocess.CompletedProcess:
    """docker/robot_entrypoint.sh in dry-run mode (prints the ROS_* settings it would run with, then exits)."""
    clean = {"PATH": os.environ["PATH"], "D2PPO_ENTRYPOINT_DRY_RUN": "1", "D2PPO_LAUNCH_DIR": str(REPO / "launch")}
    return subprocess.run(
        ["bash", str(DOCKER / "robot_entrypoint.sh"), "true"],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


def _settings(result: subprocess.CompletedProcess) -> dict[str, str]:
    return dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)


def _make_keystore(path: Path) -> Path:
    """The files `ros2 security create_keystore` leaves that the robot needs (private/ stays off the robot)."""
    for f in ("public/ca.cert.pem", "enclaves/governance.p7s", "enclaves/franka/cert.pem"):
        (path / f).parent.mkdir(parents=True, exist_ok=True)
        (path / f).write_text("x")
    for link in ("identity_ca.cert.pem", "permissions_ca.cert.pem"):
        (path / "public" / link).symlink_to("ca.cert.pem")
    return path


def test_robot_services_take_domain_and_discovery_range_from_launch_dds_env_only():
    from d2ppo_bringup.node_processes import read_env_file

    settings = read_env_file(REPO / "launch" / "dds.env")
    assert int(settings["ROS_DOMAIN_ID"]) != 0 and settings["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"
    services = _compose()["services"]
    for name in ROBOT_SERVICES:
        s = services[name]
        env_files = [s["env_file"]] if isinstance(s["env_file"], str) else s["env_file"]
        assert [(DOCKER / f).resolve() for f in env_files] == [REPO / "launch" / "dds.env"], name
        # `environment:` beats `env_file:` in compose: a DDS variable there would be a second place
        assert not {k for k in s.get("environment", {}) if k.startswith("ROS_")}, name
    assert "ROS_DOMAIN_ID" not in re.sub(r"#.*", "", (DOCKER / "compose.yaml").read_text())
    # The image carries the same file for a plain `docker run` (the entrypoint reads $D2PPO_LAUNCH_DIR/dds.env).
    assert ("COPY", "launch /opt/d2ppo/launch") in _instructions("Dockerfile.robot")


def test_entrypoint_exports_dds_env_for_unset_variables_and_keeps_the_callers():
    result = _entrypoint({"ROS_SECURITY_KEYSTORE": "/nonexistent"})
    assert result.returncode == 0, result.stderr
    settings = _settings(result)
    dds = {k: v for k, v in settings.items() if k in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE")}
    from d2ppo_bringup.node_processes import read_env_file

    assert dds == {k: v for k, v in read_env_file(REPO / "launch" / "dds.env").items() if k in dds}
    assert len(dds) == 2
    caller = _settings(_entrypoint({"ROS_DOMAIN_ID": "7", "ROS_SECURITY_KEYSTORE": "/nonexistent"}))
    assert caller["ROS_DOMAIN_ID"] == "7" and caller["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"


def test_robot_services_mount_the_sros2_keystore_read_only_where_the_entrypoint_looks():
    services = _compose()["services"]
    for name in ROBOT_SERVICES:
        sources = _volume_sources(services[name])
        assert sources.get(KEYSTORE_IN_IMAGE) == "${D2PPO_SROS2_KEYSTORE:-../sros2_keystore}", name
        assert f"{KEYSTORE_IN_IMAGE}:ro" in " ".join(services[name]["volumes"]), name
    entrypoint = (DOCKER / "robot_entrypoint.sh").read_text()
    assert f"keystore=${{ROS_SECURITY_KEYSTORE:-{KEYSTORE_IN_IMAGE}}}" in entrypoint


def test_entrypoint_enforces_sros2_only_when_the_mounted_folder_holds_a_keystore(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()  # what docker creates for a missing bind-mount source
    off = _entrypoint({"ROS_SECURITY_KEYSTORE": str(empty)})
    assert off.returncode == 0 and "ROS_SECURITY_ENABLE" not in _settings(off)
    assert f"SROS2 off: no keystore in {empty}" in off.stderr

    half = tmp_path / "half"
    (half / "enclaves").mkdir(parents=True)  # enclaves without the CA certificates is no keystore
    assert "ROS_SECURITY_ENABLE" not in _settings(_entrypoint({"ROS_SECURITY_KEYSTORE": str(half)}))

    keystore = _make_keystore(tmp_path / "keystore")
    on = _entrypoint({"ROS_SECURITY_KEYSTORE": str(keystore)})
    assert on.returncode == 0, on.stderr
    settings = _settings(on)
    assert settings["ROS_SECURITY_ENABLE"] == "true" and settings["ROS_SECURITY_STRATEGY"] == "Enforce"
    assert settings["ROS_SECURITY_KEYSTORE"] == str(keystore)
    assert f"SROS2 on: keystore {keystore}, strategy Enforce" in on.stderr

    # Asked for security without a keystore: refuse to start rather than run an open graph.
    refused = _entrypoint({"ROS_SECURITY_KEYSTORE": str(empty), "ROS_SECURITY_ENABLE": "true"})
    assert refused.returncode == 1 and "holds no keystore" in refused.stderr


def test_every_robot_node_runs_in_the_enclave_named_like_the_graphs_node():
    from d2ppo_bringup.graph import panda_graph
    from d2ppo_bringup.node_processes import enclave_name

    graph_enclaves = [enclave_name(s) for s in panda_graph("/p", "127.0.0.1")]
    services = _compose()["services"]
    enclaves = {}
    for name in ("cameras", "franka", "recorder", "teleop"):
        command = " ".join(services[name]["command"].split())
        enclaves[name] = re.search(r"--enclave (\S+)", command).group(1)
    assert enclaves == {"cameras": "/camera", "franka": "/franka", "recorder": "/recorder", "teleop": "/teleop"}
    assert {"/camera", "/franka"} <= set(graph_enclaves)
    # the record profile's franka node carries the graph's name, so `ctl` finds it there too
    assert "-r __node:=franka" in " ".join(services["franka"]["command"].split())
    # docs/bringup.md creates an enclave for each node of the robot graph, the record profile and the CLI
    listed = re.search(r'^\s*ROBOT_ENCLAVES="([^"]+)"', (REPO / "docs" / "bringup.md").read_text(), re.M)
    assert listed, "docs/bringup.md: no ROBOT_ENCLAVES list"
    assert set(listed.group(1).split()) == {*graph_enclaves, *enclaves.values(), "/ctl"}
