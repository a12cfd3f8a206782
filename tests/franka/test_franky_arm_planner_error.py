"""franky's motion-planner failure is a reflex for the controller, not a crash of the node.

franky raises ``MotionPlannerException`` ("Motion planner failed with error code -1xx") from its control loop
when Ruckig cannot plan; it has no Python binding and reaches Python as a plain ``RuntimeError`` at the next
poll. Unhandled, it killed the franka node once (teleop on franky-sim, first zero-length hold motion, 1 of 7
runs). The failure is provoked here deterministically with a NaN target sent through the arm wrapper directly
(the safety envelope never lets one through to the node's moves).
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import ros_domains
from franka_harness import start_franky_sim

pytestmark = [pytest.mark.franky, pytest.mark.timeout(60)]

HOST = f"127.0.{ros_domains.claim_domain(range(60, 80))}.1"  # a loopback address no other run uses


def test_motion_planner_failure_surfaces_as_a_reflex_and_the_arm_moves_after_recovery(tmp_path):
    from d2ppo_franka.arm import FrankyArm, ReflexError

    sim = start_franky_sim(HOST, tmp_path)
    try:
        arm = FrankyArm(HOST, realtime=False, use_gripper=False)
        arm.connect()
        start = arm.read_state()
        arm.move_to(start.ee_pos + np.array([np.nan, 0.0, 0.0]), start.ee_quat)
        with pytest.raises(ReflexError, match="Motion planner failed"):
            for _ in range(40):
                time.sleep(0.05)
                arm.poll()
        assert arm.recover()
        arm.move_to(start.ee_pos + np.array([0.01, 0.0, 0.0]), start.ee_quat)
        time.sleep(1.0)
        moved = arm.read_state().ee_pos - start.ee_pos
        print(f"\n[planner failure] recovered; then moved {np.round(moved, 4)} m for a +0.01 m x target")
        assert moved[0] == pytest.approx(0.01, abs=0.002)
    finally:
        sim.stop()
