"""Demonstration data: robomimic HDF5 files and the training window dataset."""

from d2ppo.data.robomimic_hdf5 import (
    DatasetFormatError,
    Demo,
    RobomimicWriter,
    list_demos,
    read_demo,
    read_env_args,
    validate_file,
)

__all__ = [
    "DatasetFormatError",
    "Demo",
    "RobomimicWriter",
    "SequenceDataset",
    "list_demos",
    "read_demo",
    "read_env_args",
    "validate_file",
]


def __getattr__(name):
    # The dataset needs torch; import it only when asked so HDF5 tools (the demo recorder) stay light.
    if name == "SequenceDataset":
        from d2ppo.data.dataset import SequenceDataset

        return SequenceDataset
    raise AttributeError(name)
