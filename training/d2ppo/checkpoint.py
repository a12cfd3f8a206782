"""Resumable training checkpoints without pickle: tensors in safetensors, everything else in JSON.

A checkpoint is a folder written to a temporary sibling and renamed into place, so a crash mid-write
leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"opt.{idx}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for name, t in tensors.items():
        if not name.startswith("opt."):
            continue
        _, idx, k = name.split(".", 2)
        state.setdefault(int(idx), {})[k] = t
    for key, v in meta["scalars"].items():
        idx, k = key.split(".", 1)
        state.setdefault(int(idx), {})[k] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(folder: str | Path, modules: dict[str, torch.nn.Module], optimizer: torch.optim.Optimizer, meta: dict) -> None:
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tensors = {}
    for prefix, m in modules.items():
        tensors.update({f"{prefix}.{k}": v.detach().cpu().contiguous() for k, v in m.state_dict().items()})
    opt_t, opt_meta = _flatten_optimizer(optimizer)
    tensors.update(opt_t)
    save_file(tensors, str(tmp / "state.safetensors"))
    (tmp / "meta.json").write_text(json.dumps({**meta, "optimizer": opt_meta}, indent=1))
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(folder: str | Path, modules: dict[str, torch.nn.Module], optimizer: torch.optim.Optimizer) -> dict:
    folder = Path(folder)
    tensors = load_file(str(folder / "state.safetensors"))
    meta = json.loads((folder / "meta.json").read_text())
    for prefix, m in modules.items():
        p = prefix + "."
        m.load_state_dict({k[len(p) :]: v for k, v in tensors.items() if k.startswith(p)})
    _unflatten_optimizer(optimizer, tensors, meta.pop("optimizer"))
    return meta
