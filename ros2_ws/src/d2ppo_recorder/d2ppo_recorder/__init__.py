"""Demo recorder: camera images, robot state and the actions the controller executed -> robomimic HDF5, one
durable demo per episode.

``episode`` holds the logic (pairing executed actions with inputs, sample assembly, episode buffer),
``demo_file`` the atomic saves (write a new file version in a child process, rename it over the output);
``recorder_node`` is ROS plumbing.
"""
