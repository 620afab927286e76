"""What every experiment shares: its config, its run folder, and resumable stages keyed by their inputs.

An experiment is a function body(cfg, run) -> results registered with a name, a one-line claim and a
dict of defaults. `run_experiment` merges the user's overrides into the defaults (unknown keys and
values of the wrong type are errors), claims the run folder (one writer at a time, see `folder`),
runs the body and writes config.json, versions.json, results.json and report.md.

Expensive stages go through `run.cached` (a value) or `run.checkpoint_dir` (a folder a stage fills
itself, e.g. training checkpoints). Each is saved with a record of its inputs: by default the config
values the body has read so far (cfg records every key read) plus the checksums of the data loaded,
or the explicit `depends` a caller passes. A saved stage is reused only when the values it recorded
still hold, so a changed value recomputes what depends on it and reuses the rest; results.json lists
every stage as "reused", "computed" or "recomputed: <why>" under "stages".
"""
from __future__ import annotations

import json
import math
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..files import UnreadableFile, atomic_write, load_pt
from ..report import Report, RunDir, jsonable, write_json
from .folder import RunFolder

CACHE_FORMAT = 2  # cache/<key>.pt holds {"format", "inputs", "value"}

EXPERIMENTS: dict[str, "Experiment"] = {}


@dataclass
class Experiment:
    name: str
    claim: str
    defaults: dict[str, Any]
    body: Callable[[dict, "Run"], dict]
    quick: dict[str, Any] = field(default_factory=dict)  # overrides for a tiny run (tests, smoke checks)
    nullable: tuple = ()  # keys that also take null although their default is not null


def experiment(name: str, claim: str, defaults: dict[str, Any], quick: dict[str, Any] | None = None,
               nullable: tuple = ()):
    """Register `body(cfg, run) -> results` as the experiment `name`."""
    def register(body):
        EXPERIMENTS[name] = Experiment(name, claim, dict(defaults), body, dict(quick or {}), tuple(nullable))
        return body
    return register


def get(name: str) -> Experiment:
    """The registered experiment `name` (the package's __init__ imports every experiment module)."""
    if name not in EXPERIMENTS:
        raise KeyError(f"no experiment named {name!r}; the experiments are: {', '.join(sorted(EXPERIMENTS))}")
    return EXPERIMENTS[name]


def merge_config(exp: Experiment, overrides: dict[str, Any] | None, quick: bool = False) -> dict[str, Any]:
    """The defaults, then the quick settings (if asked), then the overrides; unknown keys are refused, and
    so is a value whose type differs from the key's default (or quick value, where the default is null)."""
    if overrides is not None and not isinstance(overrides, dict):
        raise TypeError(f"config overrides must be a mapping {{key: value}}, got {type(overrides).__name__}")
    cfg = dict(exp.defaults)
    for source in ([exp.quick] if quick else []) + [overrides or {}]:
        unknown = sorted(set(source) - set(cfg), key=str)
        if unknown:
            raise KeyError(f"unknown config key(s) {unknown} for experiment {exp.name!r}; "
                           f"known keys: {', '.join(sorted(cfg))}")
        for key, value in source.items():
            check_type(exp, key, value)
        cfg.update(source)
    return cfg


NULLABLE = ("data_root", "n_train", "n_test")  # null: the default folders, every sample
TYPE_WORDS = ((bool, "true or false"), (int, "an int"), (float, "a finite number"), (str, "a string"), (list, "a list"),
         (dict, "a mapping"))


def check_type(exp: Experiment, key: str, value) -> None:
    """A TypeError unless `value` has the type of the key's default (its quick value where the default is
    null); null is accepted where the default is null or the key is nullable (NULLABLE, exp.nullable), an int
    where a float is expected."""
    example = exp.defaults[key] if exp.defaults[key] is not None else exp.quick.get(key)
    if example is None or (value is None and (exp.defaults[key] is None or key in exp.nullable + NULLABLE)):
        return
    for kind, words in TYPE_WORDS:
        if isinstance(example, kind):
            ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
            if kind is float:
                ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if kind is list:
                ok = isinstance(value, (list, tuple))
            if not ok:
                raise TypeError(f"config key {key!r} of {exp.name!r} expects {words} (default "
                                f"{json.dumps(exp.defaults[key])}), got {json.dumps(value, default=repr)}")
            return


def tell(text: str) -> None:
    """A note for the user, on stderr."""
    print(f"npk: note: {text}", file=sys.stderr)


class TrackedConfig(dict):
    """A config dict that records the keys read (item access, get, iteration, copies).

    Example: cfg = TrackedConfig(lr=0.1, epochs=3); cfg["lr"]; cfg.read == {"lr"}.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.read: set[str] = set()

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        self.read.add(key)
        return super().get(key, default)

    def _all(self):
        self.read.update(dict.keys(self))

    def __iter__(self):  # dict(cfg) and {**cfg} iterate, then read every item
        self._all()
        return super().__iter__()

    def items(self):
        self._all()
        return super().items()

    def values(self):
        self._all()
        return super().values()

    def copy(self) -> dict:
        self._all()
        return dict(super().items())


class Run:
    """One run folder being filled: the config, resumable stages keyed by their inputs, figures and the report."""

    def __init__(self, rundir: RunDir, cfg: dict[str, Any], report: Report, progress: bool = True,
                 quick: bool = False):
        self.dir, self.report, self.progress, self.quick = rundir, report, progress, quick
        self.cfg = cfg if isinstance(cfg, TrackedConfig) else TrackedConfig(cfg)
        self.path = Path(rundir.path)
        self.data_seen: dict[str, str] = {}     # data set label -> checksum, as loaded by this process
        self.stages: dict[str, str] = {}        # stage key -> "reused" / "computed" / "recomputed: why"
        self.records: dict[str, dict] = {}      # stage key -> the record of its inputs (to chain stages)
        self.notes: list[str] = []
        (self.path / "cache").mkdir(parents=True, exist_ok=True)

    def note(self, text: str) -> None:
        """Tell the user (stderr) and keep the note for results.json."""
        self.notes.append(text)
        tell(text)

    # ------------------------------------------------------------------ input records
    def inputs(self, depends=None) -> dict:
        """The record of a stage's inputs: {"explicit": depends}, or the config values read so far, the
        data checksums and the quick flag."""
        if depends is not None:
            return {"explicit": jsonable(depends)}
        return {"config": jsonable({k: dict.get(self.cfg, k) for k in sorted(self.cfg.read)}),
                "data": dict(self.data_seen), "quick": self.quick}

    def _changes(self, saved: dict, now: dict) -> list[str]:
        """What differs between a saved record and the current inputs ([] when the saved stage is valid).

        An automatic record is valid when every config value it holds equals the current one and its
        data checksums are those loaded now (keys read since do not matter: the stage did not read them)."""
        if "explicit" in saved or "explicit" in now:
            old, new = saved.get("explicit", {}), now.get("explicit", {})
            if old == new:
                return []
            if isinstance(old, dict) and isinstance(new, dict):
                return [f"{k} changed" for k in sorted(set(old) | set(new), key=str) if old.get(k) != new.get(k)]
            return ["its inputs changed"]
        current = jsonable(dict(dict.items(self.cfg)))
        out = [f"{k}: {json.dumps(v)} -> {json.dumps(current.get(k))}" for k, v in saved.get("config", {}).items()
               if current.get(k) != v]
        out += [f"the data {name!r} changed" for name, digest in saved.get("data", {}).items()
                if self.data_seen.get(name) != digest]
        if saved.get("quick") != self.quick:
            out.append(f"quick: {saved.get('quick')} -> {self.quick}")
        return out

    def _reuse(self, key: str, saved: dict) -> None:
        self.cfg.read.update(saved.get("config", {}))  # what the stage read, as if it had run now
        self.stages[key], self.records[key] = "reused", saved

    # ------------------------------------------------------------------ stages
    def cached(self, key: str, compute: Callable[[], Any], depends=None) -> Any:
        """compute() once: its result is saved under cache/<key>.pt with the record of its inputs (see the
        module doc; `depends`: an explicit JSON-able record instead) and reused while they hold.

        Values: tensors, numpy arrays and plain Python data (they are read back with weights_only=True).
        An unreadable file is named in a note and computed again.
        """
        path = self.path / "cache" / f"{key}.pt"
        status = "computed"
        if path.exists():
            try:
                saved = load_pt(path)
            except UnreadableFile as e:
                self.note(f"{e}; computing it again")
                status = f"recomputed: {e}"
            else:
                if not (isinstance(saved, dict) and saved.get("format") == CACHE_FORMAT):
                    self.note(f"{path} has no record of its inputs (an older npk wrote it); reused as it is "
                              f"(delete it, or use --force, if the config changed since)")
                    return self._save(key, path, saved, "reused (no record: written by an older npk)", depends)
                changes = self._changes(saved["inputs"], self.inputs(depends))
                if not changes:
                    self._reuse(key, saved["inputs"])
                    return saved["value"]
                status = "recomputed: " + "; ".join(changes)
        return self._save(key, path, compute(), status, depends)

    def _save(self, key: str, path: Path, value, status: str, depends) -> Any:
        inputs = self.inputs(depends)  # after compute: what it read belongs to the record too
        check_storable(value, key)
        atomic_write(path, lambda tmp: torch.save({"format": CACHE_FORMAT, "inputs": inputs, "value": value}, tmp))
        self.stages[key], self.records[key] = status, inputs
        return value

    def checkpoint_dir(self, key: str, depends=None) -> Path:
        """A folder cache/<key> for a stage that checkpoints itself (training, Gram blocks), with the record
        of its inputs in inputs.json; emptied when they changed (the stage then starts afresh).

        A stage derived from it can pass depends={"from": run.records[key], ...}."""
        path = self.path / "cache" / key
        record = path / "inputs.json"
        now = self.inputs(depends)
        self.stages[key] = "computed"
        if path.exists() and any(path.iterdir()) and not record.exists():
            self.note(f"{path} has no record of its inputs (an older npk wrote it); resumed as it is "
                      f"(delete it, or use --force, if the config changed since)")
            self.stages[key] = "reused (no record: written by an older npk)"
        elif path.exists() and any(path.iterdir()):
            try:
                saved = json.loads(record.read_text(encoding="utf-8"))
                changes = self._changes(saved, now)
            except (OSError, ValueError) as e:
                changes = [f"{record} is unreadable ({type(e).__name__})"]
            if not changes:
                self._reuse(key, saved)
                return path
            shutil.rmtree(path)
            self.stages[key] = "recomputed: " + "; ".join(changes)
        path.mkdir(parents=True, exist_ok=True)
        write_json(record, now)
        self.records[key] = now
        return path

    def figure_path(self, name: str) -> Path:
        """Where to save the figure `name` (a PNG under figures/)."""
        self.dir.figures.mkdir(parents=True, exist_ok=True)
        return self.dir.figures / name


STORABLE = (str, int, float, bool, type(None), torch.Tensor, np.ndarray, np.generic, torch.Size)


def check_storable(value, key: str) -> None:
    """A TypeError unless `value` is made of tensors, numpy arrays and plain Python data (weights_only)."""
    if isinstance(value, (dict, list, tuple)) and type(value) in (dict, list, tuple):
        for v in (value.values() if isinstance(value, dict) else value):
            check_storable(v, key)
    elif not isinstance(value, STORABLE) or (isinstance(value, np.ndarray) and value.dtype == object):
        raise TypeError(f"stage {key!r} returned a {type(value).__name__}; a cached value must be made of "
                        f"tensors, numpy arrays, numbers, strings, lists, tuples and dicts (convert it first)")


def stage_summary(stages: dict[str, str]) -> str:
    """One sentence: how many saved stages this run computed, reused and recomputed."""
    counts = {word: sum(v.split(":")[0] == word for v in stages.values()) for word in ("computed", "reused", "recomputed")}
    return (f"Saved stages: {counts['computed']} computed, {counts['reused']} reused from an earlier run, "
            f"{counts['recomputed']} recomputed because their inputs changed (the list: `stages` in results.json).")


def run_experiment(name: str, out: str | Path | None = None, overrides: dict[str, Any] | None = None,
                   force: bool = False, quick: bool = False, progress: bool = True) -> Path:
    """Run the experiment `name` into the folder `out` (default runs/<name>); return the folder.

    A folder holding an unfinished run resumes it (stages whose inputs did not change are reused); one
    holding a finished run is refused unless force, which builds the new run beside it and swaps it in
    at the end. Another process writing the same folder makes this one fail (RunFolderBusy).
    """
    exp = get(name)
    cfg = merge_config(exp, overrides, quick)
    target = Path(out or Path("runs") / name)
    with RunFolder(target, force) as place:
        for text in place.notes:
            tell(text)
        rundir = RunDir(place.path)
        rundir.results.pop("stopped", None)
        rundir.write_config({"experiment": name, **cfg})
        report = rundir.report(title=f"npk {name}")
        report.paragraph(f"**Claim examined.** {exp.claim}")
        report.paragraph("Config: " + ", ".join(f"`{k}={v}`" for k, v in cfg.items()))
        run = Run(rundir, cfg, report, progress, quick)
        run.notes += place.notes
        try:
            results = exp.body(run.cfg, run)
        except BaseException as error:
            rundir.results.update(stages=run.stages, notes=run.notes)
            place.stopped(rundir.results, error)
            raise
        rundir.save_results(experiment=name, config=cfg, stages=run.stages, notes=run.notes, **results)
        report.paragraph(stage_summary(run.stages))
        report.write()
        rundir.mark_finished()
        place.commit()
    return target


def json_ready(value):
    """Round-trip through JSON to make sure results are plain numbers, lists and dicts."""
    return json.loads(json.dumps(value, default=float))
