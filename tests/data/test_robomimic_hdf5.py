"""robomimic HDF5 reader/writer: round trip, validation errors, durability."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import h5py
import numpy as np
import pytest
from d2ppo.data import DatasetFormatError, RobomimicWriter, list_demos, read_demo, read_env_args, validate_file

ENV_ARGS = {
    "env_name": "Lift",
    "env_version": "1.5.2",
    "type": 1,
    "env_kwargs": {"robots": ["Panda"], "control_freq": 20},
}


def _episode(T: int, rng: np.random.Generator, image_size: int = 8) -> dict:
    obs = {
        "robot0_eef_pos": rng.normal(size=(T, 3)),
        "robot0_eef_quat": rng.normal(size=(T, 4)),
        "robot0_gripper_qpos": rng.normal(size=(T, 2)),
        "object": rng.normal(size=(T, 10)),
        "agentview_image": rng.integers(0, 256, size=(T, image_size, image_size, 3), dtype=np.uint8),
    }
    next_obs = {k: np.concatenate([v[1:], v[-1:]]) for k, v in obs.items()}
    return {
        "obs": obs,
        "next_obs": next_obs,
        "actions": rng.uniform(-1, 1, size=(T, 7)).astype(np.float32),
        "rewards": rng.uniform(size=T),
        "dones": np.r_[np.zeros(T - 1, int), 1],
        "states": rng.normal(size=(T, 32)),
    }


def _write(path, lengths=(5, 7, 3), seed=0) -> list[dict]:
    rng = np.random.default_rng(seed)
    eps = [_episode(T, rng) for T in lengths]
    with RobomimicWriter(path, ENV_ARGS) as w:
        for ep in eps:
            w.add_demo(**ep, model_file="<mujoco/>", attrs={"operator": "test"})
        w.write_masks(valid_fraction=0.34, seed=0)
    return eps


def test_round_trip_preserves_every_key_attr_and_mask(tmp_path):
    path = tmp_path / "rt.hdf5"
    eps = _write(path)
    assert read_env_args(path) == ENV_ARGS
    names = list_demos(path)
    assert names == ["demo_0", "demo_1", "demo_2"]
    for name, ep in zip(names, eps):
        demo = read_demo(path, name)
        assert set(demo.obs) == set(ep["obs"])
        for k in ep["obs"]:
            np.testing.assert_array_equal(demo.obs[k], ep["obs"][k])
            np.testing.assert_array_equal(demo.next_obs[k], ep["next_obs"][k])
        assert demo.obs["agentview_image"].dtype == np.uint8
        np.testing.assert_array_equal(demo.actions, ep["actions"])
        assert demo.actions.dtype == np.float32
        np.testing.assert_allclose(demo.rewards, ep["rewards"], rtol=1e-6)
        np.testing.assert_array_equal(demo.dones, ep["dones"])
        np.testing.assert_array_equal(demo.states, ep["states"])
        assert demo.attrs["num_samples"] == len(ep["actions"])
        assert demo.attrs["model_file"] == "<mujoco/>"
        assert demo.attrs["operator"] == "test"
    with h5py.File(path) as f:
        assert f["data"].attrs["total"] == 15
        assert json.loads(f["data"].attrs["env_args"]) == ENV_ARGS
        assert f["mask/train"].dtype.kind == "S"
    train, valid = list_demos(path, "train"), list_demos(path, "valid")
    assert len(valid) == 1 and len(train) == 2 and sorted(train + valid) == names
    validate_file(path, obs_keys=["robot0_eef_pos", "agentview_image"], action_dim=7)


def test_read_demo_loads_only_requested_obs_keys(tmp_path):
    path = tmp_path / "keys.hdf5"
    _write(path, lengths=(4,))
    demo = read_demo(path, "demo_0", obs_keys=["robot0_eef_pos"])
    assert list(demo.obs) == ["robot0_eef_pos"]
    with pytest.raises(DatasetFormatError, match=r"keys.hdf5: data/demo_0/obs/nope: missing"):
        read_demo(path, "demo_0", obs_keys=["nope"])


def test_demos_are_listed_in_numeric_order(tmp_path):
    path = tmp_path / "order.hdf5"
    _write(path, lengths=(2,) * 12)
    assert list_demos(path) == [f"demo_{i}" for i in range(12)]


def test_append_continues_numbering_and_total(tmp_path):
    path = tmp_path / "append.hdf5"
    _write(path, lengths=(3, 4))
    rng = np.random.default_rng(1)
    w = RobomimicWriter(path, ENV_ARGS, append=True)
    assert w.add_demo(**_episode(5, rng)) == "demo_2"
    w.close()
    assert list_demos(path) == ["demo_0", "demo_1", "demo_2"]
    with h5py.File(path) as f:
        assert f["data"].attrs["total"] == 12


def _corrupt(path, fn):
    with h5py.File(path, "a") as f:
        fn(f)


@pytest.mark.parametrize(
    "mutate, pattern",
    [
        (lambda f: f.__delitem__("data"), r"bad.hdf5: data: missing group"),
        (lambda f: f["data"].attrs.__delitem__("env_args"), r"bad.hdf5: data.attrs\[env_args\]: missing"),
        (
            lambda f: f["data"].attrs.__setitem__("env_args", "{not json"),
            r"bad.hdf5: data.attrs\[env_args\]: not valid JSON",
        ),
        (lambda f: f.__delitem__("data/demo_1/actions"), r"bad.hdf5: data/demo_1/actions: missing"),
        (lambda f: f.__delitem__("data/demo_1/obs/object"), r"bad.hdf5: data/demo_1/obs/object: missing"),
        (
            lambda f: (f.__delitem__("data/demo_1/actions"), f.create_dataset("data/demo_1/actions", data=np.zeros(7))),
            r"bad.hdf5: data/demo_1/actions: expected 2-D \[T, 7\], got shape \(7,\)",
        ),
        (
            lambda f: (
                f.__delitem__("data/demo_1/actions"),
                f.create_dataset("data/demo_1/actions", data=np.zeros((7, 6))),
            ),
            r"bad.hdf5: data/demo_1/actions: expected 2-D \[T, 7\], got shape \(7, 6\)",
        ),
        (
            lambda f: (
                f.__delitem__("data/demo_1/actions"),
                f.create_dataset("data/demo_1/actions", data=np.zeros((6, 7))),
            ),
            r"bad.hdf5: data/demo_1/obs/\w+: length 7 differs from actions length 6",
        ),
        (
            lambda f: f["data/demo_1/actions"].__setitem__((2, 3), np.nan),
            r"bad.hdf5: data/demo_1/actions: non-finite value nan at step 2",
        ),
        (
            lambda f: f["data/demo_1/actions"].__setitem__((4, 0), np.inf),
            r"bad.hdf5: data/demo_1/actions: non-finite value inf at step 4",
        ),
        (
            lambda f: (
                f.__delitem__("data/demo_1/obs/agentview_image"),
                f.create_dataset("data/demo_1/obs/agentview_image", data=np.zeros((7, 8, 8), np.uint8)),
            ),
            r"bad.hdf5: data/demo_1/obs/agentview_image: expected uint8 \[T, H, W, 3\]",
        ),
        (
            lambda f: (f.__delitem__("mask/valid"), f.create_dataset("mask/valid", data=np.array([b"demo_9"]))),
            r"bad.hdf5: mask/valid: names demos not in data: \['demo_9'\]",
        ),
    ],
    ids=[
        "no-data",
        "no-env-args",
        "bad-env-args",
        "no-actions",
        "no-obs-key",
        "actions-1d",
        "actions-wrong-dim",
        "length-mismatch",
        "nan-action",
        "inf-action",
        "image-ndim",
        "mask-unknown-demo",
    ],
)
def test_validate_file_names_file_key_and_problem(tmp_path, mutate, pattern):
    path = tmp_path / "bad.hdf5"
    _write(path, lengths=(5, 7, 3))
    validate_file(path, obs_keys=["object"], action_dim=7)  # fine before the damage
    _corrupt(path, mutate)
    with pytest.raises(DatasetFormatError, match=pattern):
        validate_file(path, obs_keys=["object"], action_dim=7)


def test_not_an_hdf5_file_is_a_format_error(tmp_path):
    path = tmp_path / "junk.hdf5"
    path.write_bytes(b"this is not hdf5")
    with pytest.raises(DatasetFormatError, match="junk.hdf5: not a readable HDF5 file"):
        validate_file(path)


def test_writer_rejects_bad_episodes_before_touching_the_file(tmp_path):
    path = tmp_path / "w.hdf5"
    rng = np.random.default_rng(0)
    w = RobomimicWriter(path, ENV_ARGS)
    ep = _episode(4, rng)
    with pytest.raises(DatasetFormatError, match=r"w.hdf5: data/demo_0/actions: non-finite"):
        w.add_demo(ep["obs"], np.full((4, 7), np.nan))
    with pytest.raises(DatasetFormatError, match=r"w.hdf5: data/demo_0/obs/object: length \(3,\) differs"):
        w.add_demo({**ep["obs"], "object": np.zeros((3, 10))}, ep["actions"])
    with pytest.raises(DatasetFormatError, match=r"agentview_image: expected uint8"):
        w.add_demo({**ep["obs"], "agentview_image": np.zeros((4, 8, 8, 3))}, ep["actions"])
    assert w.add_demo(ep["obs"], ep["actions"]) == "demo_0"
    assert list_demos(path) == ["demo_0"]


WRITER_SCRIPT = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from d2ppo.data import RobomimicWriter
    path = sys.argv[1]
    w = RobomimicWriter(path, {"env_name": "Lift", "type": 1, "env_kwargs": {}})
    rng = np.random.default_rng(0)
    for i in range(1000):
        T = 20
        obs = {"robot0_eef_pos": rng.normal(size=(T, 3)),
               "agentview_image": rng.integers(0, 256, (T, 32, 32, 3), dtype=np.uint8)}
        name = w.add_demo(obs, rng.uniform(-1, 1, (T, 7)), states=rng.normal(size=(T, 10)))
        print(name, flush=True)
        time.sleep(0.05)  # "the next episode is being recorded"
    """
)


def test_demos_survive_sigkill_of_the_writer(tmp_path):
    path = tmp_path / "killed.hdf5"
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER_SCRIPT, str(path)], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        written = []
        deadline = time.monotonic() + 60
        while len(written) < 4 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            written.append(line.strip())
        assert written[:4] == ["demo_0", "demo_1", "demo_2", "demo_3"], written
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        proc.stdout.close()
    validate_file(path, obs_keys=["robot0_eef_pos", "agentview_image"], action_dim=7)
    names = list_demos(path)
    assert names[:4] == written[:4]
    for name in names:
        demo = read_demo(path, name)
        assert demo.actions.shape == (20, 7) and demo.obs["agentview_image"].shape == (20, 32, 32, 3)
    with h5py.File(path) as f:
        assert f["data"].attrs["total"] == 20 * len(names)
