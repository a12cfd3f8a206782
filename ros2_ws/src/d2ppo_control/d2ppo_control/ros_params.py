"""Refuse to start a node whose parameter files or ``-p`` arguments hold a name the node never declared.

rclpy keeps every override that applies to a node (``/**``, wildcard and exact node keys of every
``--params-file``, plus ``-p``) and silently ignores the ones the node does not declare. Measured: a
misspelt ``safety.workspace_mn`` in a parameter file let the franka node start on the default
workspace box, wider than the first-run box the bring-up guide tells users to set. So every node,
after declaring all its parameters and before it connects to hardware or loads a policy, calls::

    refuse_undeclared_parameters(self)

which raises :class:`UnknownParameterError` (a ``ValueError``; the nodes' ``main`` prints it and exits
non-zero) with one line naming each unknown key, the closest declared name and the file(s) holding it.

Which node keys of a file reach a node (rcl's rules, checked against rclpy in the tests): a key without
a leading ``/`` gets one; ``/**`` matches any number of namespace tokens (zero included), ``/*`` exactly
one; nested maps above ``ros__parameters`` join with ``/``; nested maps below it join with ``.``.
A key under ``/**`` reaches *every* node given the file, so a file shared by several nodes keys its
node-specific sections ``/**/<node name>``.
"""

from __future__ import annotations

import difflib
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Parameters ROS itself declares or reads on every node; never reported.
ROS_PARAMETERS = frozenset({"use_sim_time", "start_type_description_service"})
#: Prefixes of ROS's own parameters (QoS overrides are declared only when a publisher or subscription
#: that allows them is created, which happens after the check).
ROS_PARAMETER_PREFIXES = ("qos_overrides.",)

_PARAMS_KEY = "ros__parameters"


class UnknownParameterError(ValueError):
    """A parameter override names a parameter the node does not declare."""


@dataclass(frozen=True)
class OverrideSource:
    """Where an override came from: a parameter file and the node key it sits under, or ``-p``."""

    file: str  # the path as given on the command line; "" for -p
    node_key: str  # e.g. "/**", "/**/sim"; "" for -p

    def describe(self) -> str:
        if not self.file:
            return "on the command line (-p)"
        return f"in {self.file} (under {self.node_key})"


# --- command line -------------------------------------------------------------------------------------
def ros_param_arguments(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """``(params files, -p assignments)`` of the ``--ros-args`` sections of ``argv``, in order.

    A ``--ros-args`` section runs to the next ``--`` or the end; there may be several.
    """
    files: list[str] = []
    assignments: list[str] = []
    in_ros_args = False
    it = iter(argv)
    for arg in it:
        if arg == "--ros-args":
            in_ros_args = True
        elif arg == "--":
            in_ros_args = False
        elif in_ros_args and arg == "--params-file":
            value = next(it, None)
            if value is not None:
                files.append(value)
        elif in_ros_args and arg in ("-p", "--param"):
            value = next(it, None)
            if value is not None:
                assignments.append(value)
    return files, assignments


# --- parameter files ----------------------------------------------------------------------------------
def node_key_matches(node_key: str, node_fqn: str) -> bool:
    """Whether a parameter file's node key (``/**``, ``/**/sim``, ``/ns/sim``, ``sim``) applies to ``node_fqn``."""
    key = node_key if node_key.startswith("/") else "/" + node_key
    pattern = ""
    for token in (t for t in key.split("/") if t):
        if token == "**":
            pattern += r"(?:/[^/]+)*"
        elif token == "*":
            pattern += r"/[^/]+"
        else:
            pattern += "/" + re.escape(token)
    return re.fullmatch(pattern or "/", node_fqn) is not None


def _flatten(params: Any, prefix: str = "") -> Iterable[str]:
    if isinstance(params, Mapping) and params:
        for name, value in params.items():
            yield from _flatten(value, f"{prefix}{name}.")
    elif prefix:
        yield prefix[:-1]


def _node_sections(data: Any, path: tuple[str, ...] = ()) -> Iterable[tuple[str, set[str]]]:
    if not isinstance(data, Mapping):
        return
    for key, value in data.items():
        if key == _PARAMS_KEY:
            node_key = "/".join(path)
            node_key = re.sub("/+", "/", node_key if node_key.startswith("/") else "/" + node_key)
            yield node_key, set(_flatten(value))
        else:
            yield from _node_sections(value, (*path, str(key)))


def file_parameters(path: str | Path) -> dict[str, set[str]]:
    """Node key -> parameter names (dotted) of one ROS parameter file; {} if it cannot be read."""
    import yaml  # only needed when there is something to report

    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return {}
    sections: dict[str, set[str]] = {}
    for node_key, names in _node_sections(data):
        sections.setdefault(node_key, set()).update(names)
    return sections


def override_sources(name: str, node_fqn: str, argv: Sequence[str]) -> list[OverrideSource]:
    """Every parameter file (under a node key that applies to ``node_fqn``) and ``-p`` that sets ``name``."""
    files, assignments = ros_param_arguments(argv)
    sources = []
    for f in dict.fromkeys(files):
        for node_key, names in file_parameters(f).items():
            if name in names and node_key_matches(node_key, node_fqn):
                sources.append(OverrideSource(f, node_key))
    if any(a.split(":=", 1)[0] == name for a in assignments):
        sources.append(OverrideSource("", ""))
    return sources


# --- the check ----------------------------------------------------------------------------------------
def is_ros_parameter(name: str) -> bool:
    return name in ROS_PARAMETERS or name.startswith(ROS_PARAMETER_PREFIXES)


def unknown_names(overrides: Iterable[str], declared: Iterable[str]) -> list[str]:
    """Overrides that are neither declared nor ROS's own, sorted."""
    known = set(declared)
    return sorted(n for n in overrides if n not in known and not is_ros_parameter(n))


def unknown_parameters_message(
    node_fqn: str, unknown: Sequence[str], declared: Iterable[str], argv: Sequence[str]
) -> str:
    """One line: each unknown key, the closest declared name and where it was set."""
    candidates = sorted(set(declared))
    parts = []
    shared_key = False
    for name in unknown:
        close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
        hint = f"did you mean '{close[0]}'?" if close else "no similar parameter"
        sources = override_sources(name, node_fqn, argv)
        where = ", ".join(s.describe() for s in sources) or "(not from a --params-file or -p in argv)"
        # A /** key no declared name resembles is likely another node's, in a file both nodes get.
        shared_key = shared_key or (not close and any(s.node_key == "/**" for s in sources))
        parts.append(f"'{name}' ({hint}) {where}")
    node = node_fqn.rsplit("/", 1)[-1]
    one = len(unknown) == 1
    message = (
        f"unknown parameter{'' if one else 's'} for node {node_fqn}: "
        + "; ".join(parts)
        + f". The node does not declare {'it' if one else 'them'} and would silently ignore "
        + f"{'it' if one else 'them'}: fix the name or remove {'it' if one else 'them'}"
    )
    if shared_key:
        message += f" (a key under /** reaches every node given the file; keys for one node go under /**/{node})"
    return message


def _declared_names(node) -> list[str]:
    return list(node._parameters)  # rclpy has no public list of declared names


def undeclared_overrides(node) -> list[str]:
    """The overrides rclpy received for ``node`` that it never declared (ROS's own excepted)."""
    # rclpy.Node keeps the merged overrides of this node (files + -p + constructor) here; no public API.
    return unknown_names(node._parameter_overrides, _declared_names(node))


def refuse_undeclared_parameters(node, argv: Sequence[str] | None = None) -> None:
    """Raise :class:`UnknownParameterError` if an override names a parameter ``node`` did not declare.

    Call after the node declared all its parameters, before it connects to anything.
    ``argv``: the process's arguments (default ``sys.argv``), searched for ``--params-file``/``-p`` to say
    where each unknown key was set.
    """
    unknown = undeclared_overrides(node)
    if not unknown:
        return
    raise UnknownParameterError(
        unknown_parameters_message(
            node.get_fully_qualified_name(), unknown, _declared_names(node), sys.argv if argv is None else argv
        )
    )
