"""Chunk execution and the safety envelope, shared by the franka node and the sim node.

The core modules (chunk, safety, executor, osc) import no ROS; ``ros_conversions`` holds the message
conversions.
"""

from d2ppo_control.chunk import ACTION_DIM, JOINT_NAMES, ActionChunk
from d2ppo_control.executor import HOLD, MOVE, ChunkExecutor, Command
from d2ppo_control.osc import delta_to_target, target_to_delta
from d2ppo_control.safety import SafetyDecision, SafetyEnvelope, SafetyLimits

__all__ = [
    "ACTION_DIM",
    "HOLD",
    "JOINT_NAMES",
    "MOVE",
    "ActionChunk",
    "ChunkExecutor",
    "Command",
    "SafetyDecision",
    "SafetyEnvelope",
    "SafetyLimits",
    "delta_to_target",
    "target_to_delta",
]
