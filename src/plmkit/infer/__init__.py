"""Inference on small devices: run a model under a budget of resident weight bytes (BMInf)."""
from .offload import OffloadConfig, OffloadStats, offload, offload_stats, parse_budget, restore, scheduler

__all__ = ["OffloadConfig", "OffloadStats", "offload", "offload_stats", "parse_budget", "restore", "scheduler"]
