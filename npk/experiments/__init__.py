"""The papers' experiments as commands: `npk run NAME` or `npk.experiments.run_experiment(NAME, ...)`.

Each experiment writes a run folder: report.md, results.json, config.json, versions.json and figures/.
"""
from .base import EXPERIMENTS, get, run_experiment

__all__ = ["EXPERIMENTS", "get", "run_experiment"]
