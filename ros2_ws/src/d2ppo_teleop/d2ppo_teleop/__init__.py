"""Teleoperation: input devices -> normalised OSC_POSE delta actions -> 1-step action chunks.

``mapping`` (deadman, gains, gripper toggle) and ``sources`` (SpaceMouse, keyboard, scripted) are plain
Python; ``teleop_node`` is ROS plumbing.
"""
