"""Camera node: RealSense colour streams (or recorded playback) as ROS images named like the policy's cameras.

The capture logic (frame sources, reconnection, timestamps) is plain Python in ``frames``, ``realsense``,
``playback`` and ``stream``; ``camera_node`` is ROS plumbing.
"""
