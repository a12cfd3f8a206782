"""Demo recorder: camera images, robot state and executed actions -> robomimic HDF5, one durable demo per episode.

``episode`` holds the logic (action timing, sample assembly, episode buffer); ``recorder_node`` is ROS plumbing.
"""
