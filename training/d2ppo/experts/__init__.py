"""Scripted experts that generate demonstrations in simulation."""

from d2ppo.experts.scripted import EXPERT_TASKS, ExpertConfig, NutAssemblyExpert, PickPlaceExpert, make_expert

__all__ = ["EXPERT_TASKS", "ExpertConfig", "NutAssemblyExpert", "PickPlaceExpert", "make_expert"]
