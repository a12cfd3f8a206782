"""Franka arm controller: executes D2PPO action chunks through franky, behind the shared safety envelope."""
