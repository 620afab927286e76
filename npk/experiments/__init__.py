"""The papers' experiments as commands: `npk run NAME` or `npk.experiments.run_experiment(NAME, ...)`.

Each experiment writes a run folder: report.md, results.json, config.json, versions.json and figures/.
Importing the package registers every experiment (the catalogue) in EXPERIMENTS.
"""
from . import catalogue  # noqa: F401  (imports every experiment module, filling EXPERIMENTS)
from .base import EXPERIMENTS, get, run_experiment

__all__ = ["EXPERIMENTS", "get", "run_experiment"]
