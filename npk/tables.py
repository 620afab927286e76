"""README tables rebuilt from committed results: `npk tables` reads results/<data>/<config>/seed-*/results.json
and writes each table between its markers in the README, so the README cannot drift from the files.

A table of a training experiment (dnn-dgn-dlgn, regimes) has one column per network with the mean +- sample
standard deviation over seeds of the test accuracy at the selected epoch (chosen on validation), and the
ratio of two networks' accuracies with a 95% interval from a paired bootstrap over seeds and test images:

    replicate b:  seeds S* drawn with replacement from the seeds run, test images I* drawn with replacement
                  from the test set (the same I* for every network and seed: the nets saw the same images)
                  ratio_b = mean_{s in S*} acc_A(s, I*) / mean_{s in S*} acc_B(s, I*)

and the interval is the 2.5 and 97.5 percentiles of ratio_b (B = 4,000 replicates, seeded). It covers test
sampling and seed-to-seed variation; with three seeds the seed part is coarse, which the table states.

A table of kernels-vs-network (one run, results/<name>/results.json) has one row per network and per kernel
machine: test accuracy with its binomial standard error from test sampling, sqrt(p (1 - p) / n_test), what
validation chose, and the stage's wall time.

Markers in the README:  <!-- npk-table: cifar10/dnn-dgn-dlgn -->  ...  <!-- /npk-table -->
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from .train import unpack_hits

N_BOOTSTRAP = 4000
MARKER = re.compile(r"(<!-- npk-table: (?P<name>[\w./-]+) -->\n)(?P<body>.*?)(<!-- /npk-table -->)", re.S)
PAPER_2020_GCONV = {"FRNPF-II": 67.09, "FRNPF-DI": 67.08, "DLNPF": 77.12, "FLNPF": 79.68, "ReLU": 80.32}


def load_seeds(folder: Path) -> list[dict]:
    """The results.json of every finished seed-K run under `folder`, in seed order (or of the one run
    whose results.json is in `folder` itself)."""
    runs = []
    paths = sorted(folder.glob("seed-*/results.json"), key=lambda p: int(p.parent.name.split("-")[1]))
    if not paths and (folder / "results.json").exists():
        paths = [folder / "results.json"]
    for path in paths:
        results = json.loads(path.read_text())
        if results.get("finished"):
            runs.append(results)
    return runs


def hits_matrix(per_seed: Sequence[Mapping], n_test: int) -> np.ndarray:
    """(seeds, test images) bool matrix of one network's per-image hits at each seed's selected epoch."""
    return np.stack([unpack_hits(run["test_hits"], n_test) for run in per_seed])


def bootstrap_ratio(hits_a: np.ndarray, hits_b: np.ndarray, n_boot: int = N_BOOTSTRAP, seed: int = 0) -> tuple[float, float]:
    """95% paired-bootstrap interval of mean_s acc_a(s) / mean_s acc_b(s) (module docstring)."""
    rng = np.random.default_rng(seed)
    n_seeds, n_test = hits_a.shape
    ratios = np.empty(n_boot)
    for b in range(n_boot):
        seeds = rng.integers(0, n_seeds, n_seeds)
        weights = np.bincount(rng.integers(0, n_test, n_test), minlength=n_test)
        ratios[b] = (hits_a[seeds] @ weights).sum() / (hits_b[seeds] @ weights).sum()
    low, high = np.percentile(ratios, [2.5, 97.5])
    return float(low), float(high)


def network_runs(runs: Sequence[Mapping], family: str, net: str, key: str) -> list[dict]:
    """Each seed's record of one network (dnn-dgn-dlgn: key "accuracy"; regimes: key "regimes")."""
    return [record for results in runs for record in results[key][family][net]["runs"]]


FULL_SIZES = {"cifar10": (50_000, 10_000), "fashion-mnist": (60_000, 10_000), "mnist": (60_000, 10_000)}


def n_test_of(results: Mapping) -> int:
    """The test-set size of a run: the data set's full test set when n_test is null."""
    n = results["config"].get("n_test")
    return n if n is not None else FULL_SIZES[results["config"]["dataset"]][1]


def train_val_sizes(cfg: Mapping) -> tuple[int, int]:
    """(training, validation) images of a run: n_train (or the full training set) split as Dataset.hold_out."""
    n = cfg["n_train"] if cfg["n_train"] is not None else FULL_SIZES[cfg["dataset"]][0]
    n_val = int(round(cfg["val_fraction"] * n))
    return n - n_val, n_val


def mean_pm(values: Sequence[float]) -> str:
    a = 100 * np.asarray(values)
    return f"{a.mean():.2f} ± {a.std(ddof=1):.2f}" if len(a) > 1 else f"{a.mean():.2f}"


def convergence(records: Sequence[Mapping], max_epochs: int) -> str:
    """'selected epochs a/b/c of at most E (stopped by patience: k of n)'."""
    stopped = sum(r["stopped_early"] for r in records)
    epochs = "/".join(str(r["selected_epoch"]) for r in records)
    return f"{epochs} (run {'/'.join(str(r['epochs_run']) for r in records)}; {stopped} of {len(records)} stopped by patience)"


def comparison_table(runs: Sequence[Mapping], key: str, nets: Sequence[str], reference: str,
                     label: Callable[[str], str]) -> tuple[list[str], dict]:
    """Markdown lines of one training experiment's table and the numbers behind it."""
    family = runs[0]["config"]["families"][0]
    max_epochs = runs[0]["config"]["epochs"]
    records = {net: network_runs(runs, family, net, key) for net in nets}
    hits = {net: hits_matrix(records[net], n_test_of(runs[0])) for net in nets}
    ratios = {n: (hits[n].mean() / hits[reference].mean(), bootstrap_ratio(hits[n], hits[reference]))
              for n in nets if n != reference}
    header = ["", *[label(n) for n in nets]]
    rows = [["test accuracy at the validation-selected epoch (%)",
             *[mean_pm([r["selected_test_acc"] for r in records[n]]) for n in nets]],
            [f"ratio to {label(reference)} (95% interval)",
             *["1" if n == reference else f"{ratios[n][0]:.3f} [{ratios[n][1][0]:.3f}, {ratios[n][1][1]:.3f}]"
               for n in nets]],
            ["best test accuracy over epochs (%, test-selected: for reference only)",
             *[mean_pm([r["best_test_acc"] for r in records[n]]) for n in nets]],
            [f"selected epochs per seed (at most {max_epochs})", *[convergence(records[n], max_epochs) for n in nets]],
            ["training time per seed (s)", *["/".join(f"{r['wall_time_s']:.0f}" for r in records[n]) for n in nets]]]
    numbers = {"seeds": [r["config"]["seed"] for r in runs], "max_epochs": max_epochs, "nets": {}}
    for n in nets:
        numbers["nets"][n] = {field: [r[field] for r in records[n]] for field in
                              ("selected_test_acc", "best_test_acc", "selected_epoch", "epochs_run", "wall_time_s")}
        if n != reference:
            numbers["nets"][n]["ratio"] = {"to": reference, "value": float(ratios[n][0]), "interval_95": ratios[n][1]}
    return markdown(header, rows), numbers


def markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|---" + "|---:" * (len(header) - 1) + "|"]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def provenance(folder: Path, runs: Sequence[Mapping]) -> str:
    cfg = runs[0]["config"]
    n_train, n_val = train_val_sizes(cfg)
    files = ", ".join(f"`{folder.as_posix()}/seed-{r['config']['seed']}/results.json`" for r in runs)
    return (f"Source: {files} ({len(runs)} seed{'s' * (len(runs) > 1)}); {cfg['dataset']}, {n_train:,} training "
            f"and {n_val:,} validation images, {n_test_of(runs[0]):,} test images; Adam {cfg['lr']}, batch "
            f"{cfg['batch_size']}, bias {str(cfg['bias']).lower()}, patience {cfg['patience']}. Intervals: paired "
            f"bootstrap over seeds and test images ({N_BOOTSTRAP:,} replicates; `npk.tables`).")


def dnn_dgn_dlgn_table(folder: Path, runs: Sequence[Mapping]) -> tuple[list[str], dict]:
    kinds = runs[0]["config"]["kinds"]
    lines, numbers = comparison_table(runs, "accuracy", kinds, "dnn", str.upper)
    return lines + ["", provenance(folder, runs)], numbers


def regimes_table(folder: Path, runs: Sequence[Mapping]) -> tuple[list[str], dict]:
    order = [n for n in PAPER_2020_GCONV if n in runs[0]["config"]["regimes"]]
    lines, numbers = comparison_table(runs, "regimes", order, "ReLU", str)
    paper = [f"{PAPER_2020_GCONV[n] / PAPER_2020_GCONV['ReLU']:.3f}" if n != "ReLU" else "1" for n in order]
    lines.append("| 2020 table, ratio to ReLU (GCONV, full CIFAR-10, 200 epochs, best test over epochs) | "
                 + " | ".join(paper) + " |")
    return lines + ["", provenance(folder, runs)], numbers


KERNEL_LABELS = {"npk-init": "NPK at initialisation", "npk-learnt": "NPK of the learnt gates",
                 "ntk-init": "empirical NTK at initialisation", "ntk-end": "empirical NTK of the trained net",
                 "ntk-inf": "infinite-width NTK of the same depth"}


def percent_se(accuracy: float, n_test: int) -> str:
    """'84.00 ± 0.37': accuracy and its binomial standard error over n_test images, in percent."""
    return f"{100 * accuracy:.2f} ± {100 * (accuracy * (1 - accuracy) / n_test) ** 0.5:.2f}"


def kernels_vs_network_table(folder: Path, runs: Sequence[Mapping]) -> tuple[list[str], dict]:
    (results,) = runs
    cfg, n_test = results["config"], n_test_of(results)
    n_train, n_val = train_val_sizes(cfg)
    header = [f"{n_train:,} training images", "test accuracy (%, ± s.e.)", "chosen on validation", "wall time (s)"]
    rows, numbers = [], {}
    for kind, entry in results["kernels_vs_network"].items():
        net = entry["network"]
        rows.append([f"{kind.upper()} network", percent_se(net["selected_test_acc"], n_test),
                     f"epoch {net['selected_epoch']} of {net['epochs_run']}", f"{net['wall_time_s']:.0f}"])
        numbers[f"{kind} network"] = net["selected_test_acc"]
        for name, fit in entry["kernels"].items():
            rows.append([f"{kind.upper()} kernel ridge, {KERNEL_LABELS.get(name, name)}",
                         percent_se(fit["accuracy"], n_test), f"ridge {fit['fit']['param_relative']:g} x tr(K)/N",
                         f"{sum(fit['seconds'].values()):.0f}"])
            numbers[f"{kind} {name}"] = fit["accuracy"]
    total = sum(t["seconds"] for t in results["timings"])
    source = (f"Source: `{folder.as_posix()}/results.json`; {cfg['dataset']}, {n_train:,} training, {n_val:,} "
              f"validation and {n_test:,} test images; {cfg['family']} {'-'.join(map(str, cfg['widths']))}, "
              f"{cfg['optimizer']} {cfg['lr']}, batch {cfg['batch_size']}, at most {cfg['epochs']} epochs, patience "
              f"{cfg['patience']}; Grams {cfg['gram_dtype']} on disk, CG tolerance {cfg['cg_tol']:g} with "
              f"{cfg['landmarks']} Nyström landmarks. All stages {total:,.0f} s, peak anonymous memory "
              f"{results['peak_anon'] / 2**30:.2f} GiB.")
    return markdown(header, rows) + ["", source], numbers


BUILDERS = {"dnn-dgn-dlgn": dnn_dgn_dlgn_table, "regimes": regimes_table, "kernels-vs-network": kernels_vs_network_table}


def build(results_root: Path, name: str) -> tuple[list[str], dict]:
    """The markdown lines and numbers of table `name` ("<data>/<config>") from results_root/<name>/seed-*
    (one line saying so when no seed has finished yet)."""
    folder = results_root / name
    runs = load_seeds(folder)
    if not runs:
        return [f"No seed of `{name}` has finished yet: the runs are in progress (`analysis/cifar10_seeds.sh`); "
                f"this table fills in as seeds finish."], {}
    builder = BUILDERS.get(runs[0]["experiment"])
    if builder is None:
        raise ValueError(f"no README table for experiment {runs[0]['experiment']!r} ({folder}); "
                         f"tables exist for {', '.join(BUILDERS)}")
    return builder(Path(results_root.name) / name, runs)   # named as in the repository: results/<name>


def rebuild_readme(readme: Path, results_root: Path, check: bool = False) -> list[str]:
    """Rewrite every marked table of `readme` from results_root; with check, write nothing and return
    the names of the tables that differ (empty: the README matches the committed results)."""
    text = readme.read_text()
    stale = []

    def replace(match: re.Match) -> str:
        lines, _ = build(results_root, match["name"])
        body = "\n".join(lines) + "\n"
        if body != match["body"]:
            stale.append(match["name"])
        return match[1] + body + match[4]
    new = MARKER.sub(replace, text)
    if not check and new != text:
        readme.write_text(new)
    return stale
