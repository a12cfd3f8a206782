"""The inference node's and sim node's plain-Python cores, without DDS: PolicyRunner, the frame and
finger conversions shared by the sim and the robot path, the sim's replanning schedule, and the
graph's parameter precedence."""

from __future__ import annotations

import numpy as np
import pytest
from d2ppo.package import load_policy
from d2ppo_bringup.graph import NodeSpec, ros_arguments, sim_graph
from d2ppo_inference.policy_runner import PolicyRunner
from d2ppo_inference.robot_state import BasePose, fingers_from_gripper_qpos, gripper_qpos_from_fingers
from d2ppo_sim.lockstep import ReplanSchedule

PERIOD = 0.05


@pytest.fixture(scope="module")
def policy(tiny_policy):
    return load_policy(tiny_policy)


def fill(obs, stamp: float, image_stamp: float | None = None) -> None:
    obs.set_image("agentview", stamp if image_stamp is None else image_stamp, np.zeros((32, 32, 3), np.uint8))
    obs.set_ee_pose(stamp, [0.45, 0.0, 0.1], [1.0, 0.0, 0.0, 0.0])
    obs.set_fingers(stamp, 0.02, 0.02)


def test_chunk_is_stamped_with_newest_observation(policy):
    runner = PolicyRunner(policy)
    obs = runner.observation_inputs()
    fill(obs, 10.0, image_stamp=10.03)
    result = runner.tick(obs, now=10.05)
    assert result.skip_reason is None
    assert result.chunk is not None
    assert result.chunk.stamp == pytest.approx(10.03)
    assert result.chunk.actions.shape == (4, 7)
    assert result.chunk.period == pytest.approx(PERIOD)
    assert np.all(np.abs(result.chunk.actions) <= 1.0)


def test_missing_input_skips_tick_and_names_it(policy):
    runner = PolicyRunner(policy)
    obs = runner.observation_inputs()
    obs.set_ee_pose(1.0, [0.45, 0.0, 0.1], [1.0, 0.0, 0.0, 0.0])
    result = runner.tick(obs, now=1.0)
    assert result.chunk is None
    assert "missing" in result.skip_reason
    assert "cameras/agentview/image_raw" in result.skip_reason and "robot/joint_states" in result.skip_reason
    assert runner.stats()["skipped_ticks"] == 1


def test_stale_observation_skips_tick(policy):
    runner = PolicyRunner(policy, max_obs_age=0.1)
    obs = runner.observation_inputs()
    fill(obs, 1.0)
    obs.set_image("agentview", 0.8, np.zeros((32, 32, 3), np.uint8))
    result = runner.tick(obs, now=1.0)
    assert result.chunk is None
    assert result.skip_reason.startswith("stale")
    assert "cameras/agentview/image_raw" in result.skip_reason and "robot/ee_pose" not in result.skip_reason


def test_observation_stamped_ahead_of_the_clock_is_fresh(policy):
    # The lock-step sim's images can arrive before its /clock message.
    runner = PolicyRunner(policy, max_obs_age=0.1)
    obs = runner.observation_inputs()
    fill(obs, 2.0)
    assert runner.tick(obs, now=1.95).chunk is not None


@pytest.mark.parametrize(("replan", "expected"), [("chunk", [0, 4, 8]), ("tick", list(range(10)))])
def test_replan_mode_sets_which_ticks_sample(policy, replan, expected):
    runner = PolicyRunner(policy, replan=replan)
    obs = runner.observation_inputs()
    planned = []
    for k in range(10):
        t = 1.0 + k * PERIOD
        fill(obs, t)
        if runner.tick(obs, now=t).chunk is not None:
            planned.append(k)
    assert planned == expected


def test_observation_gap_restarts_history_and_replans(policy):
    runner = PolicyRunner(policy, max_obs_age=0.2)
    obs = runner.observation_inputs()
    fill(obs, 1.0)
    assert runner.tick(obs, now=1.0).chunk is not None
    fill(obs, 1.05)
    assert runner.tick(obs, now=1.05).chunk is None  # mid-chunk
    fill(obs, 3.0)  # the next episode, after the sim's gap
    result = runner.tick(obs, now=3.0)
    assert result.history_reset and result.chunk is not None
    assert runner.stats()["history_resets"] == 1


def test_replan_schedule_waits_exactly_at_the_ticks_the_runner_samples(policy):
    """The sim waits for a chunk only at ticks where the inference node sends one (else it would stall)."""
    for replan, every in (("chunk", policy.act_steps), ("tick", 1)):
        runner = PolicyRunner(policy, replan=replan)
        schedule = ReplanSchedule(PERIOD, every)
        obs = runner.observation_inputs()
        for k in range(13):
            t = 1.0 + k * PERIOD  # accumulated like the sim's clock, rounding included
            fill(obs, t)
            due = schedule.chunk_due(t)
            chunk = runner.tick(obs, now=t).chunk
            assert due == (chunk is not None), (replan, k)
            if chunk is not None:
                schedule.on_chunk(chunk.stamp)


def test_base_frame_round_trip_and_lift_base_offset():
    base = BasePose(pos=np.array([-0.56, 0.0, 0.912]), quat=np.array([0.0, 0.0, np.sin(0.3), np.cos(0.3)]))
    pos_w, quat_w = np.array([-0.1, 0.02, 1.0]), np.array([0.0, 1.0, 0.0, 0.0])
    pos_b, quat_b = base.to_base(pos_w, quat_w)
    back_pos, back_quat = base.to_world(pos_b, quat_b)
    np.testing.assert_allclose(back_pos, pos_w, atol=1e-12)
    np.testing.assert_allclose(back_quat, quat_w, atol=1e-12)
    # Identity rotation: the base frame is the world frame shifted by the base position.
    lift = BasePose(pos=np.array([-0.56, 0.0, 0.912]))
    np.testing.assert_allclose(lift.to_base(pos_w, quat_w)[0], [0.46, 0.02, 0.088], atol=1e-12)


def test_base_pose_comes_from_the_policy_card():
    card = {"obs": {"robot_base_pos": [-0.56, 0.0, 0.912]}}
    np.testing.assert_allclose(BasePose.from_card(card).pos, [-0.56, 0.0, 0.912])
    np.testing.assert_allclose(BasePose.from_card({"obs": {}}).pos, [0.0, 0.0, 0.0])


def test_finger_joints_map_to_robosuite_gripper_qpos():
    # robosuite's finger_joint2 is negative; ROS drivers publish both fingers as positive half-widths.
    qpos = np.array([0.0208, -0.0208])
    f1, f2 = fingers_from_gripper_qpos(qpos)
    assert f1 > 0 and f2 > 0
    np.testing.assert_allclose(gripper_qpos_from_fingers(f1, f2), qpos)


def test_inline_parameters_override_profile_files(tmp_path):
    """safety.yaml opens ``/**`` and sim.yaml ``/**/sim``; an inline horizon must still win."""
    import rclpy

    sim = next(s for s in sim_graph("/some/policy", episodes=3, horizon=7) if s.name == "sim")
    args = ros_arguments(sim, inline_params_file=tmp_path / "sim.yaml")
    context = rclpy.Context()
    rclpy.init(args=["sim_node", *args], context=context)
    try:
        node = rclpy.create_node("sim", context=context)
        node.declare_parameter("horizon", 300)
        node.declare_parameter("episodes", 0)
        node.declare_parameter("safety.workspace_min", [0.0, 0.0, 0.0])
        assert node.get_parameter("horizon").value == 7
        assert node.get_parameter("episodes").value == 3
        # The sim profile's workspace (below the base plane, robosuite's pedestal) beats safety.yaml's.
        assert node.get_parameter("safety.workspace_min").value[2] < 0.0
        node.destroy_node()
    finally:
        rclpy.shutdown(context=context)


def test_inline_policy_path_stays_a_string(tmp_path):
    import rclpy

    spec = NodeSpec("p", "e", "m", "n", params={"policy": "123", "flag": True})
    context = rclpy.Context()
    rclpy.init(args=["x", *ros_arguments(spec, inline_params_file=tmp_path / "n.yaml")], context=context)
    try:
        node = rclpy.create_node("n", context=context)
        node.declare_parameter("policy", "")
        node.declare_parameter("flag", False)
        assert node.get_parameter("policy").value == "123"
        assert node.get_parameter("flag").value is True
        node.destroy_node()
    finally:
        rclpy.shutdown(context=context)


@pytest.mark.timeout(120)
def test_sim_messages_rebuild_exactly_the_training_observation(policy):
    """robosuite obs -> the sim node's messages -> the inference node's raw observation gives the policy the
    same input as the training/evaluation path (robosuite obs -> raw_obs), frames and fingers included."""
    from d2ppo_inference.policy_runner import LatestObservations
    from d2ppo_inference.robot_state import finger_positions
    from d2ppo_inference.ros_messages import ee_pose_from_msg, ee_pose_msg, image_msg, image_to_array, joint_state_msg
    from d2ppo_sim.robosuite_sim import RobosuiteSim, SimTask

    sim = RobosuiteSim(SimTask(camera_names=("agentview",), image_size=32), seed=3)
    try:
        sim.reset()
        rng = np.random.default_rng(0)
        for _ in range(5):
            sim.step(np.concatenate([rng.uniform(-0.5, 0.5, 6), [1.0]]))  # move and close the gripper
        obs = sim.observation()
        assert np.linalg.norm(obs.ee_pos - obs.raw["robot0_eef_pos"]) > 0.5  # base frame != world frame
        image, joints, pose = (
            image_msg(obs.images["agentview"], 2.0, "agentview_color_optical_frame"),
            joint_state_msg(obs.arm_positions, obs.fingers, 2.0, obs.arm_velocities),
            ee_pose_msg(obs.ee_pos, obs.ee_quat, 2.0),
        )
        assert joints.position[7] > 0 and joints.position[8] > 0  # both fingers positive, like franka_ros2
        latest = LatestObservations(("agentview",))
        latest.set_image("agentview", 2.0, image_to_array(image))
        latest.set_fingers(2.0, *finger_positions(joints.name, joints.position))
        latest.set_ee_pose(2.0, *ee_pose_from_msg(pose))
        # The policy card stores the training world's base position (d2ppo.train writes it).
        via_ros = latest.raw(BasePose(pos=sim.base.pos))

        direct = policy.obs_builder()(obs.raw)
        deployed = policy.obs_builder()(via_ros)
        np.testing.assert_array_equal(deployed["rgb"], direct["rgb"])
        np.testing.assert_allclose(deployed["state"], direct["state"], atol=1e-6)
    finally:
        sim.close()


def test_onnx_backend_gives_the_same_chunks_as_torch_in_the_runner(tiny_policy, tmp_path):
    import shutil

    pkg = tmp_path / "pkg"
    shutil.copytree(tiny_policy, pkg)  # the onnx sampler writes policy.onnx into the package
    runners = [PolicyRunner(load_policy(pkg), backend=b, seed=7) for b in ("torch", "onnx")]
    obs = [r.observation_inputs() for r in runners]
    for k in range(8):
        t = 1.0 + k * PERIOD
        results = []
        for r, o in zip(runners, obs):
            fill(o, t)
            o.set_ee_pose(t, [0.45 + 0.01 * k, 0.0, 0.1], [1.0, 0.0, 0.0, 0.0])
            results.append(r.tick(o, now=t))
        assert (results[0].chunk is None) == (results[1].chunk is None)
        if results[0].chunk is not None:
            np.testing.assert_allclose(results[0].chunk.actions, results[1].chunk.actions, atol=1e-4)
            assert results[0].chunk.stamp == results[1].chunk.stamp
    assert (pkg / "policy.onnx").is_file()


def test_history_of_several_frames_holds_consecutive_control_steps(tmp_path):
    """To = 2: a repeated observation adds no frame, and a dropped tick (a hole in the history the policy
    never saw in training) starts a fresh history."""
    from d2ppo.model import PolicyConfig
    from d2ppo.obs import ObsSpec
    from d2ppo.package import make_random_policy

    spec = ObsSpec(camera_names=(), n_obs_steps=2)
    runner = PolicyRunner(load_policy(make_random_policy(tmp_path / "to2", spec=spec, cfg=PolicyConfig(mlp_dims=(32,) * 3))))
    obs = runner.observation_inputs()

    def tick(t: float):
        obs.set_ee_pose(t, [0.45, 0.0, 0.1 + t], [1.0, 0.0, 0.0, 0.0])
        obs.set_fingers(t, 0.02, 0.02)
        return runner.tick(obs, now=t)

    tick(1.0)
    tick(1.05)
    assert len(runner.builder._state) == 2
    runner.tick(obs, now=1.10)  # no new observation this tick
    assert runner.builder._state[0][2] != runner.builder._state[1][2]  # still the two distinct steps
    result = tick(1.20)  # the 1.15 observation never came
    assert result.history_reset and len(runner.builder._state) == 1
