"""Stand-in for the inference node: publishes action chunks at a fixed rate until killed.

Usage: chunk_streamer.py ACTION_CSV [--horizon 4] [--period 0.05]
Publishes one chunk of ``horizon`` copies of the action every ``horizon * period`` seconds, stamped with
the current time, on policy/action_chunk (ROS_DOMAIN_ID from the environment). Prints "streaming" once a
subscriber matched.
"""

import argparse
import time

import numpy as np
import rclpy
from d2ppo_control.chunk import ActionChunk
from d2ppo_control.ros_conversions import chunk_to_msg
from trajectory_msgs.msg import JointTrajectory


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("action", help="7 comma-separated normalised values")
    parser.add_argument("--horizon", type=int, default=4)
    parser.add_argument("--period", type=float, default=0.05)
    args = parser.parse_args()
    action = np.array([float(v) for v in args.action.split(",")])
    rclpy.init()
    node = rclpy.create_node("chunk_streamer")
    pub = node.create_publisher(JointTrajectory, "policy/action_chunk", 10)
    while pub.get_subscription_count() == 0:
        time.sleep(0.01)
    print("streaming", flush=True)
    actions = np.tile(action, (args.horizon, 1))
    next_t = time.time()
    while True:
        pub.publish(chunk_to_msg(ActionChunk(stamp=time.time(), period=args.period, actions=actions, source="policy")))
        next_t += args.horizon * args.period
        time.sleep(max(0.0, next_t - time.time()))


if __name__ == "__main__":
    main()
