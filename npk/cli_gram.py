"""`npk gram`: the NPK or NTK Gram of a saved model over a data set split, into a .npy file (resumable).

    npk gram runs/x/cache/train-dnn/checkpoint.pt --model 'C4GAP("dnn", in_channels=1, input_size=8, width=16)' \\
        --dataset digits --n 500 --kernel npk --out gram.npy

The model is rebuilt from `--model`, a call of a class or preset in `npk.models` with literal arguments,
then loads the checkpoint's weights (a checkpoint that `npk.train` or an experiment wrote, or a plain
state dict; loaded with weights_only=True). Finished tiles go to `--checkpoint-dir` (default: OUT.tiles),
so rerunning the same command resumes.
"""
from __future__ import annotations

import argparse
import ast
import math
import sys
import time

from .validate import byte_count


def parse_bytes(text: str) -> int:
    """argparse type: '512MiB', '2GB', '1e9' -> bytes (a positive, finite size)."""
    try:
        return byte_count("size", text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive size like 512MiB, 2GB or 1e9 (bytes), got {text!r}") \
            from None


def positive_seconds(text: str) -> float:
    """argparse type: a finite number of seconds > 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def add_parser(sub) -> None:
    p = sub.add_parser("gram", help="the NPK / NTK Gram of a saved model over a data set split, into a .npy file")
    p.add_argument("checkpoint", nargs="?", help="model weights: a checkpoint.pt of npk.train / an experiment, or a "
                   "state dict (omit: the model's fresh initialisation under --seed)")
    p.add_argument("--model", required=True, help="the architecture, a call of npk.models with literal arguments, "
                   "e.g. 'C4GAP(\"dnn\", in_channels=1, input_size=8, width=16)' or 'DLGN(64, [128, 128], 10)'")
    p.add_argument("--dataset", default="digits", help="digits (embedded), mnist, fashion-mnist, cifar10, cifar100")
    p.add_argument("--data-root", help="directory holding the data set's official files")
    p.add_argument("--split", choices=("train", "test"), default="train")
    p.add_argument("--n", type=int, help="samples of the split (a class-stratified subset; default: all)")
    p.add_argument("--kernel", choices=("npk", "ntk"), default="npk")
    p.add_argument("--out", required=True, help="the .npy file the Gram is written to")
    p.add_argument("--checkpoint-dir", help="the tile store (default: OUT.tiles); a rerun resumes from it")
    p.add_argument("--memory-budget", type=parse_bytes, help="bytes for one tile's work, e.g. 64MiB")
    p.add_argument("--max-memory", type=parse_bytes, help="refuse up front if the estimate is over, e.g. 8GiB")
    p.add_argument("--scheduler", help="a Dask scheduler address (tcp://host:8786): tiles run on the cluster")
    p.add_argument("--connect-timeout", type=positive_seconds, default=5.0,
                   help="seconds to wait for the --scheduler to answer (default 5)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--seed", type=int, default=0, help="torch seed for a model built without a checkpoint")
    p.add_argument("--no-progress", action="store_true")


def build_model(expression: str):
    """The model of a call expression like 'ConvDNN(1, [8, 8], input_size=8)' on npk.models (literals only)."""
    from . import models
    try:
        call = ast.parse(expression, mode="eval").body
        if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name):
            raise ValueError("not a call")
        args = [ast.literal_eval(a) for a in call.args]
        kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
    except (SyntaxError, ValueError) as err:
        raise ValueError(f"--model must be a call of an npk.models class or preset with literal arguments, like "
                         f"'DLGN(64, [128, 128], 10)'; got {expression!r} ({err})") from None
    if call.func.id not in models.__all__ or not callable(getattr(models, call.func.id)):
        raise ValueError(f"--model: {call.func.id!r} is not in npk.models; choose one of {', '.join(models.__all__)}")
    try:
        return getattr(models, call.func.id)(*args, **kwargs)
    except (TypeError, ValueError) as err:
        raise ValueError(f"--model {expression}: {err}") from None


def load_weights(model, path: str) -> None:
    """Load a checkpoint of npk.train (its "model" entry) or a plain state dict into `model`; ValueError
    (naming the file) when it cannot be read or does not fit."""
    from .files import load_pt
    state = load_pt(path)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]                       # an npk.train checkpoint
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as err:
        raise ValueError(f"{path} does not hold weights of this --model ({str(err).splitlines()[0]}); check the "
                         f"architecture arguments") from None


def describe(err: BaseException) -> str:
    """One line for an error: an OSError as 'PATH: reason' (never a bare errno), others as their message."""
    if isinstance(err, OSError) and err.strerror:
        where = f"{err.filename}: " if err.filename else ""
        return f"{where}{err.strerror}; check that the path exists and this user may write there"
    return " ".join(str(err.args[0] if err.args else err).split())


def run(args) -> int:
    """Compute the Gram of `args` into args.out; 0 on success, 2 (with a one-line message) on bad input."""
    import torch

    from . import data as datasets
    from .kernels.npk import npk_gram
    from .kernels.ntk import ntk_gram
    client = None
    try:
        if not args.out.endswith(".npy"):
            raise ValueError(f"--out must be a .npy file, got {args.out!r}")
        if args.checkpoint_dir is not None and not args.checkpoint_dir.strip():
            raise ValueError("--checkpoint-dir '': expected a folder path (omit it for OUT.tiles)")
        torch.manual_seed(args.seed)
        dtype = getattr(torch, args.dtype)
        model = build_model(args.model).to(dtype).eval()
        if args.checkpoint:
            load_weights(model, args.checkpoint)
        n = {"n_train" if args.split == "train" else "n_test": args.n}
        ds = datasets.load(args.dataset, root=args.data_root, flatten=len(model.input_shape) == 1, dtype=dtype, **n)
        X = ds.X_train if args.split == "train" else ds.X_test
        if args.scheduler:
            from .kernels.dist import client_of
            client = client_of(args.scheduler, timeout=args.connect_timeout)[0]
        options = dict(out=args.out, checkpoint_dir=args.checkpoint_dir or args.out + ".tiles",
                       max_memory=args.max_memory, scheduler=client, progress=not args.no_progress)
        if args.memory_budget:
            options["memory_budget"] = args.memory_budget
        start = time.perf_counter()
        (npk_gram if args.kernel == "npk" else ntk_gram)(model, X, **options)
    except (ValueError, OSError, MemoryError, RuntimeError, ImportError) as err:
        print(f"npk gram: error: {describe(err)}", file=sys.stderr)
        return 2
    finally:
        if client is not None:
            client.close()
    print(f"wrote {args.out}: the {args.kernel.upper()} Gram of {len(X)} {ds.name} {args.split} samples "
          f"({len(X)} x {len(X)} {args.dtype}) in {time.perf_counter() - start:.1f} s")
    return 0
