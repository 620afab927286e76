"""Run folders and markdown reports: the provenance of every experiment.

A run folder holds
    config.json     the configuration the run was started with
    versions.json   Python, library and npk versions, platform, CPU and GPU
    results.json    the numbers, rewritten atomically (temporary file + os.replace); "finished": true
                    once the run completed (RunDir refuses to reuse such a folder unless force=True)
    figures/*.png   the figures
    report.md       a markdown report (`Report`) that embeds the figures by relative links
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import platform
import sys
from numbers import Integral, Real
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .files import atomic_write
from .plots import save_figure

RESULTS = "results.json"


# ------------------------------------------------------------------------------------------ helpers
def atomic_write_text(path, text: str) -> Path:
    """Write text to `path` atomically (`npk.files.atomic_write`), synced to disk before the move."""
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    atomic_write(path, write)
    return Path(path)


def jsonable(value):
    """value with tensors / arrays as lists, numpy scalars as Python numbers, paths as strings, dataclasses
    as dicts and non-finite floats as the strings "nan", "inf", "-inf" (strict JSON has no NaN)."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable(value.to_dict() if hasattr(value, "to_dict") else dataclasses.asdict(value))
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "tolist"):
        return jsonable(value.detach().cpu().tolist() if hasattr(value, "detach") else value.tolist())
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def write_json(path, value) -> Path:
    """Atomically write `value` (through `jsonable`) as indented, strict JSON."""
    return atomic_write_text(path, json.dumps(jsonable(value), indent=2, allow_nan=False) + "\n")


def data_checksum(tensors) -> str:
    """sha256 hex digest of named arrays (a mapping name -> tensor/array, or a sequence named 0, 1, ...).

    Each array contributes "name:dtype:shape;" then its bytes (C order), so a change of values, dtype,
    shape, name or order changes the digest. For the four arrays of an npk.data.Dataset under their
    attribute names it equals Dataset.checksum().
    """
    items = tensors.items() if isinstance(tensors, Mapping) else enumerate(tensors)
    h = hashlib.sha256()
    for name, t in items:
        a = np.ascontiguousarray(t.detach().cpu().numpy() if hasattr(t, "detach") else np.asarray(t))
        h.update(f"{name}:{a.dtype.str}:{a.shape};".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def versions() -> dict:
    """Versions of Python and the libraries, the platform, the CPU and the GPUs torch sees."""
    import matplotlib
    import scipy
    import sklearn
    import torch

    from ._version import __version__
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return {"python": sys.version.split()[0], "npk": __version__, "torch": torch.__version__,
            "numpy": np.__version__, "scipy": scipy.__version__, "sklearn": sklearn.__version__,
            "matplotlib": matplotlib.__version__, "platform": platform.platform(), "cpu": cpu,
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "cuda": torch.version.cuda, "gpus": gpus}


# ------------------------------------------------------------------------------------------ run folder
class RunDir:
    """A run folder (layout in the module docstring).

    Opening a folder whose results.json says "finished": true raises FileExistsError unless force=True,
    which starts the results afresh (results.json is reset at once; other files are overwritten as the new
    run writes them). An unfinished run's results are loaded, so a rerun can pick up where it stopped.
    versions.json is written on opening.
    """

    def __init__(self, path, force: bool = False):
        self.path = Path(path)
        self.figures = self.path / "figures"
        self.results = {} if force else self._previous_results()
        self.path.mkdir(parents=True, exist_ok=True)
        if force:
            self.save_results()
        write_json(self.path / "versions.json", versions())

    def _previous_results(self) -> dict:
        f = self.path / RESULTS
        if not f.exists():
            return {}
        try:
            results = json.loads(f.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{f} is not valid JSON ({e}); delete it, or pass force=True to start a new run "
                             f"in {self.path}") from e
        if results.get("finished") is True:
            raise FileExistsError(f"{self.path} holds a finished run ({RESULTS} has \"finished\": true); pass "
                                  f"force=True (npk run --force) to replace it, or choose another folder")
        return results

    @property
    def finished(self) -> bool:
        return self.results.get("finished") is True

    def write_config(self, config: Mapping) -> Path:
        """Write config.json (the run's configuration, seeds included)."""
        return write_json(self.path / "config.json", config)

    def save_results(self, **values) -> Path:
        """Merge `values` into the results and rewrite results.json atomically ("finished" stays false)."""
        self.results.update(values)
        self.results.setdefault("finished", False)
        return write_json(self.path / RESULTS, self.results)

    def mark_finished(self) -> Path:
        """Record that the run completed: results.json gets "finished": true."""
        self.results["finished"] = True
        return write_json(self.path / RESULTS, self.results)

    def save_figure(self, fig, name: str) -> Path:
        """Save a matplotlib Figure as figures/<name>.png and return its path."""
        return save_figure(fig, self.figures / (name if name.endswith(".png") else name + ".png"))

    def report(self, title: str | None = None) -> "Report":
        """A Report that writes report.md in this folder."""
        return Report(self.path / "report.md", title)


# ------------------------------------------------------------------------------------------ markdown
class Report:
    """A markdown document built section by section; `write()` saves it (atomically) at `path`.

    Every method but write returns the Report, so calls chain. Figures are linked relative to the
    report's folder and numbered in order.
    """

    def __init__(self, path, title: str | None = None):
        self.path = Path(path)
        self.blocks: list[str] = [] if title is None else [f"# {title}"]
        self.n_figures = 0

    def heading(self, text: str, level: int = 2) -> "Report":
        if not 1 <= level <= 6:
            raise ValueError(f"markdown heading levels are 1..6, got {level}")
        self.blocks.append("#" * level + " " + text)
        return self

    def paragraph(self, text: str) -> "Report":
        self.blocks.append(text.strip())
        return self

    def table(self, rows: Sequence, columns: Sequence[str] | None = None,
              floatfmt: str | Mapping[str, str] = ".4f") -> "Report":
        """A markdown table. rows: dicts (columns picks and orders keys; default: every key, first seen
        first) or sequences (columns names them, required). Floats use `floatfmt` (one format, or one per
        column); None is an empty cell; numeric columns are right-aligned."""
        self.blocks.append(markdown_table(rows, columns, floatfmt))
        return self

    def figure(self, path, caption: str) -> "Report":
        """Embed the image at `path` (linked relative to the report) with a numbered caption."""
        self.n_figures += 1
        link = Path(os.path.relpath(Path(path).resolve(), self.path.parent.resolve())).as_posix()
        self.blocks.append(f"![{caption}]({link})\n\n*Figure {self.n_figures}: {caption}*")
        return self

    def text(self) -> str:
        return "\n\n".join(self.blocks) + "\n"

    def write(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return atomic_write_text(self.path, self.text())


def markdown_table(rows: Sequence, columns: Sequence[str] | None = None,
                   floatfmt: str | Mapping[str, str] = ".4f") -> str:
    """The text of a markdown table (see Report.table)."""
    rows = list(rows)
    if rows and all(isinstance(r, Mapping) for r in rows):
        columns = list(columns) if columns is not None else list(dict.fromkeys(k for r in rows for k in r))
        cells = [[r.get(c) for c in columns] for r in rows]
    elif columns is None:
        raise ValueError("table rows that are sequences need `columns` (the header names)")
    else:
        columns, cells = list(columns), [list(r) for r in rows]
        bad = [i for i, r in enumerate(cells) if len(r) != len(columns)]
        if bad:
            raise ValueError(f"table rows {bad} do not have {len(columns)} cells (columns {columns})")
    fmts = [floatfmt.get(c, ".4f") if isinstance(floatfmt, Mapping) else floatfmt for c in columns]
    numeric = [all(_is_number(r[j]) for r in cells if r[j] is not None) for j in range(len(columns))]
    lines = ["| " + " | ".join(_cell(c, "") for c in columns) + " |",
             "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    lines += ["| " + " | ".join(_cell(v, f) for v, f in zip(r, fmts)) + " |" for r in cells]
    return "\n".join(lines)


def _is_number(v) -> bool:
    return isinstance(v, (Real, np.number)) and not isinstance(v, (bool, np.bool_))


def _cell(v, fmt: str) -> str:
    if v is None:
        return ""
    if _is_number(v) and not isinstance(v, Integral):
        return format(float(v), fmt)
    return str(v).replace("|", "\\|").replace("\n", " ")
