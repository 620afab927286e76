"""The `npk` command: `npk demo`, `npk run NAME`, `npk list`, `npk gram` (see `npk.cli_gram`).

Every error is one line on stderr ("npk run: error: ...", naming the flag or path and what is
expected) with exit status 2 and no traceback (NPK_TRACEBACK=1 shows it); flags that have no effect
print a warning.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path

from . import cli_gram


class UsageError(Exception):
    """A bad command line: the message names the flag and what it expects."""


def one_line(text) -> str:
    return " ".join(str(text).split())


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage block)."""

    def error(self, message):
        print(f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def positive_int(text: str) -> int:
    """argparse type: an int >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive int, got {text!r}")
    return value


def thread_count(text: str) -> int:
    """argparse type: an int from 1 to 4 x the CPU cores (more threads than that only risk a crash)."""
    value, most = positive_int(text), 4 * (os.cpu_count() or 1)
    if value > most:
        raise argparse.ArgumentTypeError(f"expected at most {most} (4 x the {os.cpu_count()} CPU cores), got {text!r}")
    return value


def parse_assignment(text: str) -> tuple[str, object]:
    """'key=value' -> (key, value), the value read as JSON when it parses (numbers, lists, true) else a string;
    NaN, Infinity and numbers beyond float range are refused."""
    if "=" not in text or not text.split("=", 1)[0]:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    key, value = text.split("=", 1)
    try:
        parsed = json.loads(value, parse_constant=_not_finite, parse_float=_finite_float)
    except json.JSONDecodeError:
        return key, value
    except ValueError:
        raise argparse.ArgumentTypeError(f"{key}: expected a finite number, got {value!r}") from None
    return key, parsed


def _not_finite(text: str):
    raise ValueError(text)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="npk", description="The dual view of ReLU networks: NPK, NTK, theorems.")
    sub = parser.add_subparsers(dest="command")
    parser.commands = sub.choices  # the subcommands (a live view: later add_parser calls show up)

    def add_run_options(p):
        p.add_argument("--dataset", help="digits (embedded), mnist, fashion-mnist, cifar10, cifar100, imagefolder")
        p.add_argument("--data-root", help="directory holding the data set's official files")
        p.add_argument("--n", type=positive_int, help="training samples (a class-stratified subset); unless "
                       "--n-test is given, the test set is cut to N / 2 samples too")
        p.add_argument("--n-test", type=positive_int, help="test samples (a class-stratified subset)")
        p.add_argument("--out", help="run folder (default runs/<name>)")
        p.add_argument("--force", action="store_true", help="replace a finished run in --out (the old run "
                       "stays until the new one has finished)")
        p.add_argument("--quick", action="store_true", help="tiny settings, for a smoke test")
        p.add_argument("--config", help="JSON file of config overrides (an object {key: value})")
        p.add_argument("--set", dest="assignments", type=parse_assignment, action="append", default=[],
                       metavar="KEY=VALUE", help="override one config key (repeatable)")
        p.add_argument("--no-progress", action="store_true", help="no progress bars")
        p.add_argument("--threads", type=thread_count, help="torch CPU threads (default: torch's choice); 1 is "
                       "often fastest for small nets on a busy machine")

    add_run_options(sub.add_parser("demo", help="the tour: networks vs their kernels, theorem checks, spectra"))
    run = sub.add_parser("run", help="run one experiment of the papers")
    run.add_argument("name", help="experiment name (see `npk list`)")
    add_run_options(run)
    sub.add_parser("list", help="list the experiments")
    tables = sub.add_parser("tables", help="rebuild the README's result tables from results/*/seed-*/results.json")
    tables.add_argument("--readme", default="README.md", help="the file whose marked tables to rewrite")
    tables.add_argument("--results", default="results", help="the folder of committed results")
    tables.add_argument("--check", action="store_true", help="write nothing; exit 1 if a table differs")
    cli_gram.add_parser(sub)
    return parser


def parse(argv=None) -> argparse.Namespace:
    """The parsed command line; unknown flags and a missing command are one-line errors."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    prog = f"npk {args.command}" if args.command else "npk"
    if extra:
        print(f"{prog}: error: unrecognized arguments: {' '.join(extra)} (see {prog} --help)", file=sys.stderr)
        sys.exit(2)
    if args.command is None:
        parser.error(f"expected a command: {', '.join(parser.commands)}")
    return args


def read_config(path: str) -> dict:
    """The overrides in the --config file: a JSON object."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"--config {path}: no such file; expected a JSON file of config overrides") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"--config {path}: cannot read it ({getattr(e, 'strerror', None) or e}); expected a "
                         f"JSON file of config overrides") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise UsageError(f"--config {path}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    if not isinstance(value, dict):
        raise UsageError(f"--config {path}: expected a JSON object {{\"key\": value, ...}}, got a "
                         f"{ {list: 'list', str: 'string'}.get(type(value), 'number or constant')}")
    return value


def overrides_from(args) -> dict:
    overrides = read_config(args.config) if args.config else {}
    for flag, key in (("dataset", "dataset"), ("data_root", "data_root"), ("n", "n_train"), ("n_test", "n_test")):
        if getattr(args, flag) is not None:
            overrides[key] = getattr(args, flag)
    if args.n is not None and args.n_test is None:
        overrides.setdefault("n_test", max(1, args.n // 2))
    overrides.update(dict(args.assignments))
    return overrides


def warn_ignored(args, cfg: dict) -> None:
    """Warn about settings that have no effect."""
    if cfg.get("data_root") is not None and str(cfg.get("dataset", "")).lower() == "digits":
        source = "--data-root" if args.data_root is not None else "data_root"
        warnings.warn(f"{source} is ignored: the digits data set is embedded (scikit-learn), it reads no files")


def close_progress_bars() -> None:
    """End the progress bars an error left open, so that the error starts a line of its own."""
    from tqdm import tqdm
    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def main(argv=None) -> int:
    args = parse(argv)
    if args.command == "gram":
        return cli_gram.run(args)
    prog = f"npk {args.command}"
    if args.command == "tables":
        return run_tables(args, prog)
    from . import experiments
    if args.command == "list":
        width = max(map(len, experiments.EXPERIMENTS))
        for name, exp in sorted(experiments.EXPERIMENTS.items()):
            print(f"{name:<{width}}  {exp.claim}")
        return 0
    name = "demo" if args.command == "demo" else args.name
    start = time.perf_counter()
    previous = warnings.showwarning
    warnings.showwarning = lambda message, *_, **__: print(f"{prog}: warning: {one_line(message)}", file=sys.stderr)
    try:
        from .experiments.base import merge_config
        from .experiments.folder import RunFolderError
        if args.threads:
            import torch
            torch.set_num_threads(args.threads)
        if args.out is not None and not args.out.strip():
            raise UsageError("--out '': expected a folder path (omit --out for runs/<name>)")
        overrides = overrides_from(args)
        warn_ignored(args, merge_config(experiments.get(name), overrides, args.quick))
        try:
            folder = experiments.run_experiment(name, args.out, overrides, force=args.force, quick=args.quick,
                                                progress=not args.no_progress)
        except RunFolderError as e:
            raise UsageError(f"--out {e}" if args.out else str(e)) from e
    except KeyboardInterrupt:
        close_progress_bars()
        print(f"{prog}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001  (every error is one line; NPK_TRACEBACK=1 for the traceback)
        if os.environ.get("NPK_TRACEBACK"):
            raise
        close_progress_bars()
        known = isinstance(e, (UsageError, KeyError, ValueError, TypeError, OSError, ArithmeticError))
        text = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"{prog}: error: {one_line(text) if known else type(e).__name__ + ': ' + one_line(text)}",
              file=sys.stderr)
        return 2
    finally:
        warnings.showwarning = previous
    print(f"wrote {folder}/report.md in {time.perf_counter() - start:.0f} s")
    return 0


def run_tables(args, prog: str) -> int:
    """`npk tables`: rewrite (or, with --check, compare) the README's marked tables from the results folder."""
    from .tables import rebuild_readme
    try:
        stale = rebuild_readme(Path(args.readme), Path(args.results), check=args.check)
    except (OSError, ValueError) as e:
        print(f"{prog}: error: {one_line(e)}", file=sys.stderr)
        return 2
    if args.check and stale:
        print(f"{prog}: {args.readme} differs from {args.results} in: {', '.join(stale)}; run `npk tables`",
              file=sys.stderr)
        return 1
    print(f"{prog}: {'checked' if args.check else 'rebuilt'} the tables of {args.readme}")
    return 0


def run_script(name: str, config, argv) -> int:
    """What analysis/NAME.py runs: `npk run NAME --config CONFIG ARGV`; a --config in ARGV replaces CONFIG.

    Example: run_script("regimes", Path("analysis/configs/regimes.json"), ["--out", "runs/gconv"]).
    """
    argv = list(argv)
    if not any(a == "--config" or a.startswith("--config=") for a in argv):
        argv = ["--config", str(config), *argv]
    return main(["run", name, *argv])


if __name__ == "__main__":
    sys.exit(main())
