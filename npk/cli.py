"""The `npk` command: `npk demo`, `npk run NAME`, `npk list`, `npk gram` (see `npk.cli_gram`)."""
from __future__ import annotations

import argparse
import json
import sys
import time

from . import cli_gram


def parse_assignment(text: str) -> tuple[str, object]:
    """'key=value' -> (key, value), the value read as JSON when it parses (numbers, lists, true) else a string."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="npk", description="The dual view of ReLU networks: NPK, NTK, theorems.")
    sub = parser.add_subparsers(dest="command", required=True)

    def add_run_options(p):
        p.add_argument("--dataset", help="digits (embedded), mnist, fashion-mnist, cifar10, cifar100")
        p.add_argument("--data-root", help="directory holding the data set's official files")
        p.add_argument("--n", type=int, help="training samples (a class-stratified subset); unless --n-test "
                       "is given, the test set is cut to N / 2 samples too")
        p.add_argument("--n-test", type=int, help="test samples (a class-stratified subset)")
        p.add_argument("--out", help="run folder (default runs/<name>)")
        p.add_argument("--force", action="store_true", help="overwrite a finished run in --out")
        p.add_argument("--quick", action="store_true", help="tiny settings, for a smoke test")
        p.add_argument("--config", help="JSON file of config overrides")
        p.add_argument("--set", dest="assignments", type=parse_assignment, action="append", default=[],
                       metavar="KEY=VALUE", help="override one config key (repeatable)")
        p.add_argument("--no-progress", action="store_true", help="no progress bars")
        p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice); 1 is often "
                       "fastest for small nets on a busy machine")

    add_run_options(sub.add_parser("demo", help="the tour: networks vs their kernels, theorem checks, spectra"))
    run = sub.add_parser("run", help="run one experiment of the papers")
    run.add_argument("name", help="experiment name (see `npk list`)")
    add_run_options(run)
    sub.add_parser("list", help="list the experiments")
    cli_gram.add_parser(sub)
    return parser


def overrides_from(args) -> dict:
    overrides = {}
    if args.config:
        with open(args.config) as f:
            overrides.update(json.load(f))
    for flag, key in (("dataset", "dataset"), ("data_root", "data_root"), ("n", "n_train"), ("n_test", "n_test")):
        if getattr(args, flag) is not None:
            overrides[key] = getattr(args, flag)
    if args.n is not None and args.n_test is None:
        overrides.setdefault("n_test", max(1, args.n // 2))
    overrides.update(dict(args.assignments))
    return overrides


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "gram":
        return cli_gram.run(args)
    from .experiments import base
    if args.command == "list":
        base.get("demo")
        width = max(map(len, base.EXPERIMENTS))
        for name, exp in sorted(base.EXPERIMENTS.items()):
            print(f"{name:<{width}}  {exp.claim}")
        return 0
    name = "demo" if args.command == "demo" else args.name
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    try:
        folder = base.run_experiment(name, args.out, overrides_from(args), force=args.force, quick=args.quick,
                                     progress=not args.no_progress)
    except (KeyError, ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"npk {args.command}: error: {err.args[0] if err.args else err}", file=sys.stderr)
        return 2
    print(f"wrote {folder}/report.md in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
