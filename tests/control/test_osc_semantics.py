"""delta_to_target reproduces robosuite 1.5's OSC_POSE delta goal (base frame, rotation applied in base frame)."""

import os

import numpy as np
import pytest
from d2ppo_control.osc import axis_angle_to_quat, delta_to_target, quat_to_matrix, target_to_delta

os.environ.setdefault("MUJOCO_GL", "egl")


def test_position_delta_is_scaled_translation_in_base_frame():
    pos, quat = delta_to_target(np.array([0.5, -1.0, 0.2, 0, 0, 0, 1]), np.array([0.4, 0.1, 0.3]), [0, 0, 0, 1])
    np.testing.assert_allclose(pos, [0.425, 0.05, 0.31])
    np.testing.assert_allclose(quat, [0, 0, 0, 1], atol=1e-12)


def test_components_beyond_unit_range_are_clipped_like_robosuite_scale_action():
    pos, _ = delta_to_target(np.array([3.0, 0, 0, 0, 0, 0]), np.zeros(3), [0, 0, 0, 1])
    np.testing.assert_allclose(pos, [0.05, 0, 0])


def test_rotation_is_applied_about_base_axes_not_end_effector_axes():
    # EE pointing down (180 deg about x). A +yaw action must rotate about the base z axis.
    down = np.array([1.0, 0.0, 0.0, 0.0])
    _, quat = delta_to_target(np.array([0, 0, 0, 0, 0, 1.0]), np.zeros(3), down)
    expected = quat_to_matrix(axis_angle_to_quat([0, 0, 0.5])) @ quat_to_matrix(down)
    np.testing.assert_allclose(quat_to_matrix(quat), expected, atol=1e-12)
    # about the EE's own z (which points down) the yaw would have the opposite sign
    wrong = quat_to_matrix(down) @ quat_to_matrix(axis_angle_to_quat([0, 0, 0.5]))
    assert not np.allclose(quat_to_matrix(quat), wrong, atol=1e-3)


def test_target_to_delta_inverts_delta_to_target():
    rng = np.random.default_rng(0)
    for _ in range(20):
        a = rng.uniform(-1, 1, 6)
        q0 = rng.normal(size=4)
        q0 /= np.linalg.norm(q0)
        p0 = rng.uniform(-1, 1, 3)
        p1, q1 = delta_to_target(a, p0, q0)
        np.testing.assert_allclose(target_to_delta(p0, q0, p1, q1), a, atol=1e-9)


def test_matches_robosuite_transform_utils_composition():
    T = pytest.importorskip("robosuite.utils.transform_utils")
    rng = np.random.default_rng(1)
    for _ in range(20):
        a = rng.uniform(-1, 1, 7)
        q0 = rng.normal(size=4)
        q0 /= np.linalg.norm(q0)
        # robosuite compute_goal_ori: goal = quat2mat(axisangle2quat(delta)) @ current
        expected = T.quat2mat(T.axisangle2quat(a[3:6] * 0.5)) @ T.quat2mat(q0)
        _, q1 = delta_to_target(a, np.zeros(3), q0)
        np.testing.assert_allclose(quat_to_matrix(q1), expected, atol=1e-6)  # robosuite computes in float32


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_matches_the_goal_robosuites_osc_controller_sets_in_lift():
    suite = pytest.importorskip("robosuite")
    from robosuite.controllers import load_composite_controller_config
    from robosuite.utils import transform_utils as T

    env = suite.make(
        "Lift",
        robots="Panda",
        controller_configs=load_composite_controller_config(robot="Panda"),
        has_renderer=False,
        has_offscreen_renderer=False,
        use_camera_obs=False,
        hard_reset=False,
        control_freq=20,
        seed=0,
    )
    try:
        env.reset()
        ctrl = env.robots[0].part_controllers["right"]
        assert (ctrl.input_type, ctrl.input_ref_frame) == ("delta", "base")
        rng = np.random.default_rng(2)
        for _ in range(3):
            action = np.concatenate([rng.uniform(-1, 1, 6), [-1.0]])
            ctrl.update(force=True)  # the controller's cached EE state lags the sim by one substep
            pre = ctrl.goal_origin_to_eef_pose()  # EE pose in the robot base frame, before the step
            env.step(action)
            pos, quat = delta_to_target(action, pre[:3, 3], T.mat2quat(pre[:3, :3]))
            np.testing.assert_allclose(pos, ctrl.goal_pos, atol=1e-7)
            np.testing.assert_allclose(quat_to_matrix(quat), ctrl.goal_ori, atol=1e-6)
    finally:
        env.close()
