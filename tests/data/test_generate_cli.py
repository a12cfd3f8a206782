"""d2ppo.experts.generate: low-dim-only generation with --cameras none, and one clear line for a bad camera."""

from __future__ import annotations

import pytest
from d2ppo.data import list_demos, read_demo, validate_file
from d2ppo.experts.generate import main


@pytest.mark.timeout(180)
def test_cameras_none_writes_a_low_dim_file_that_train_cameras_none_trains_on(tmp_path, capsys):
    from d2ppo.package import load_policy
    from d2ppo.train import main as train_main

    out = tmp_path / "lift_lowdim.hdf5"
    assert main(["--task", "lift", "--episodes", "2", "--seed", "1", "--cameras", "none", "--out", str(out),
                 "--no-progress"]) == 0
    assert "kept 2/" in capsys.readouterr().out
    validate_file(out, obs_keys=["robot0_eef_pos", "object"], action_dim=7)
    demo = read_demo(out, list_demos(out)[0])
    assert not any(k.endswith("_image") for k in demo.obs)
    train_main(["--data", str(out), "--out", str(tmp_path / "run"), "--cameras", "none", "--lowdim-keys",
                "robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos", "object", "--all-demos", "--steps", "2",
                "--batch-size", "8", "--mlp-dims", "16", "16", "16", "--threads", "1"])
    pkg = load_policy(tmp_path / "run" / "policy")
    assert pkg.spec.camera_names == () and pkg.spec.state_dim == 19


@pytest.mark.parametrize("cameras", [["nocam"], ["agentview", "none"]], ids=["unknown", "none-with-a-camera"])
def test_an_unknown_camera_is_one_clear_error(tmp_path, cameras):
    out = tmp_path / "x.hdf5"
    with pytest.raises(SystemExit) as e:
        main(["--task", "lift", "--episodes", "1", "--cameras", *cameras, "--out", str(out), "--no-progress"])
    msg = str(e.value)
    assert msg.startswith("error: --cameras") and "\n" not in msg and "agentview" in msg
    assert not out.exists() and not (tmp_path / "x.hdf5.partial").exists()
