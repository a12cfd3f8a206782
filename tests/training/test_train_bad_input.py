"""d2ppo.train on a data file that is not a demonstration file ends in one clear line, like the other data errors."""

from __future__ import annotations

import pytest
from d2ppo.train import main


@pytest.mark.parametrize(
    "content,match",
    [(b"demo_0,0.1,0.2\n", "not a readable HDF5 file"), (b"", "not a readable HDF5 file")],
    ids=["csv", "empty"],
)
def test_a_data_file_that_is_not_hdf5_is_one_clear_error(tmp_path, content, match):
    data = tmp_path / "demos.hdf5"
    data.write_bytes(content)
    with pytest.raises(SystemExit) as e:
        main(["--data", str(data), "--out", str(tmp_path / "run"), "--cameras", "none", "--steps", "1"])
    msg = str(e.value)
    assert msg.startswith("error: ") and "demos.hdf5" in msg and match in msg and "\n" not in msg


def test_an_hdf5_file_without_demos_is_one_clear_error(tmp_path):
    import h5py

    data = tmp_path / "other.hdf5"
    with h5py.File(data, "w") as f:
        f["x"] = [1, 2, 3]
    with pytest.raises(SystemExit) as e:
        main(["--data", str(data), "--out", str(tmp_path / "run"), "--cameras", "none", "--steps", "1"])
    msg = str(e.value)
    assert msg.startswith("error: ") and "other.hdf5" in msg and "'data'" in msg and "\n" not in msg
