"""``d2ppo <command> ...`` — one entry point for the training workspace's command-line tools."""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "generate": ("d2ppo.experts.generate", "scripted-expert demos -> robomimic HDF5"),
    "train": ("d2ppo.train", "pre-train a diffusion policy (diffusion + dispersive loss)"),
    "eval": ("d2ppo.evaluate", "success rate of a policy package in robosuite"),
    "finetune": ("d2ppo.rl.finetune", "PPO over the denoising chain (DPPO two-layer MDP)"),
    "export": ("d2ppo.export", "export a package's sampler to ONNX"),
    "features": ("d2ppo.features", "PCA / t-SNE of the regularised layer for two policies (collapse figure)"),
    "compare": ("d2ppo.compare", "λ = 0 (DPPO) vs λ = 0.5 (D²PPO) on the same data, seeds and budget"),
    "ablation": ("d2ppo.ablation", "λ x layer x seeds pre-training grid, λ sweep, automatic layer/λ choice (resumable)"),
    "finetune-comparison": ("d2ppo.finetune_comparison", "D²PPO vs DPPO vs Gaussian PPO at equal env steps (resumable)"),
}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: d2ppo <command> [args]\n\ncommands:")
        for name, (_, text) in COMMANDS.items():
            print(f"  {name:20s} {text}")
        sys.exit(0 if argv and argv[0] in ("-h", "--help") else 2)
    module = importlib.import_module(COMMANDS[argv[0]][0])
    module.main(argv[1:])


if __name__ == "__main__":
    main()
