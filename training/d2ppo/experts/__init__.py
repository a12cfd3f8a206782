"""Scripted experts that generate demonstrations in simulation."""

from d2ppo.experts.scripted import ExpertConfig, PickPlaceExpert

__all__ = ["ExpertConfig", "PickPlaceExpert"]
