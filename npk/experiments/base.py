"""What every experiment shares: its config, its run folder, and resumable stages.

An experiment is a function body(cfg, run) -> results registered with a name, a one-line claim and a
dict of defaults. `run_experiment` merges the user's overrides into the defaults (unknown keys are an
error), opens the run folder (refusing a finished one unless force), runs the body and writes
config.json, versions.json, results.json and report.md. Expensive stages go through `run.cached`, so
an interrupted run resumes from what it had saved.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from ..kernels.store import atomic_write
from ..report import Report, RunDir

EXPERIMENTS: dict[str, "Experiment"] = {}


@dataclass
class Experiment:
    name: str
    claim: str
    defaults: dict[str, Any]
    body: Callable[[dict, "Run"], dict]
    quick: dict[str, Any] = field(default_factory=dict)  # overrides for a tiny run (tests, smoke checks)


def experiment(name: str, claim: str, defaults: dict[str, Any], quick: dict[str, Any] | None = None):
    """Register `body(cfg, run) -> results` as the experiment `name`."""
    def register(body):
        EXPERIMENTS[name] = Experiment(name, claim, dict(defaults), body, dict(quick or {}))
        return body
    return register


def get(name: str) -> Experiment:
    from . import catalogue  # noqa: F401  (imports every experiment module, filling EXPERIMENTS)
    if name not in EXPERIMENTS:
        raise KeyError(f"no experiment named {name!r}; the experiments are: {', '.join(sorted(EXPERIMENTS))}")
    return EXPERIMENTS[name]


def merge_config(exp: Experiment, overrides: dict[str, Any] | None, quick: bool = False) -> dict[str, Any]:
    """The defaults, then the quick settings (if asked), then the overrides; unknown keys are refused."""
    cfg = dict(exp.defaults)
    for source in ([exp.quick] if quick else []) + [overrides or {}]:
        unknown = sorted(set(source) - set(cfg))
        if unknown:
            raise KeyError(f"unknown config key(s) {unknown} for experiment {exp.name!r}; "
                           f"known keys: {', '.join(sorted(cfg))}")
        cfg.update(source)
    return cfg


class Run:
    """One run folder being filled: the config, resumable stages, figures and the report."""

    def __init__(self, rundir: RunDir, cfg: dict[str, Any], report: Report, progress: bool = True,
                 quick: bool = False):
        self.dir, self.cfg, self.report, self.progress, self.quick = rundir, cfg, report, progress, quick
        self.path = Path(rundir.path)
        (self.path / "cache").mkdir(parents=True, exist_ok=True)

    def cached(self, key: str, compute: Callable[[], Any]) -> Any:
        """compute() once: its result is saved under cache/<key>.pt and loaded on a rerun."""
        path = self.path / "cache" / f"{key}.pt"
        if path.exists():
            return torch.load(path, weights_only=False)
        value = compute()
        atomic_write(path, lambda tmp: torch.save(value, tmp))
        return value

    def checkpoint_dir(self, key: str) -> Path:
        """A folder for a stage that checkpoints itself (training, Gram blocks)."""
        path = self.path / "cache" / key
        path.mkdir(parents=True, exist_ok=True)
        return path

    def figure_path(self, name: str) -> Path:
        """Where to save the figure `name` (a PNG under figures/)."""
        self.dir.figures.mkdir(parents=True, exist_ok=True)
        return self.dir.figures / name


def run_experiment(name: str, out: str | Path | None = None, overrides: dict[str, Any] | None = None,
                   force: bool = False, quick: bool = False, progress: bool = True) -> Path:
    """Run the experiment `name` into the folder `out` (default runs/<name>); return the folder."""
    exp = get(name)
    cfg = merge_config(exp, overrides, quick)
    rundir = RunDir(out or Path("runs") / name, force=force)
    if force:  # a forced rerun starts afresh: saved stages of the old run may belong to another config
        shutil.rmtree(Path(rundir.path) / "cache", ignore_errors=True)
    rundir.write_config({"experiment": name, **cfg})
    report = rundir.report(title=f"npk {name}")
    report.paragraph(f"**Claim examined.** {exp.claim}")
    report.paragraph("Config: " + ", ".join(f"`{k}={v}`" for k, v in cfg.items()))
    run = Run(rundir, cfg, report, progress, quick)
    results = exp.body(cfg, run)
    rundir.save_results(experiment=name, config=cfg, **results)
    report.write()
    rundir.mark_finished()
    return Path(rundir.path)


def json_ready(value):
    """Round-trip through JSON to make sure results are plain numbers, lists and dicts."""
    return json.loads(json.dumps(value, default=float))
