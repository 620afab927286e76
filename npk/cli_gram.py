"""`npk gram`: the NPK or NTK Gram of a saved model over a data set split, into a .npy file (resumable).

    npk gram runs/x/cache/train-dnn/checkpoint.pt --model 'C4GAP("dnn", in_channels=1, input_size=8, width=16)' \\
        --dataset digits --n 500 --kernel npk --out gram.npy

    npk gram net.pt --module mynet.py:Net --dataset cifar10 --n 1000 --out gram.npy   # your own nn.Module

The model is rebuilt from `--model`, a call of a class or preset in `npk.models` with literal arguments,
or from `--module FILE.py:CLASS`, your nn.Module class (built with no arguments, traced with
`npk.models.from_module`), then loads the checkpoint's weights (a checkpoint that `npk.train` or an
experiment wrote, or a plain state dict; loaded with weights_only=True).

Beside OUT.npy, OUT.json keeps the context: the labels and sample indices of the rows, the data checksum,
the model (its spec, checkpoint and fingerprint), the kernel and its options. Finished tiles go to
`--checkpoint-dir` (default: OUT.tiles), so an interrupted run resumes; the store is removed when the Gram
is complete unless `--keep-tiles`. Rerunning a complete command (same OUT.json context) does nothing; another
command on a complete OUT is refused unless `--force`.
"""
from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import math
import sys
import time
from pathlib import Path

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
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help="the architecture, a call of npk.models with literal arguments, "
                       "e.g. 'C4GAP(\"dnn\", in_channels=1, input_size=8, width=16)' or 'DLGN(64, [128, 128], 10)'")
    which.add_argument("--module", help="FILE.py:CLASS, your own ReLU nn.Module class (built with no arguments; the "
                       "checkpoint is its state dict), traced with npk.models.from_module")
    p.add_argument("--gating", choices=("self", "relu", "linear", "shallow"), default="self",
                   help="the gating network of a --module (see npk.models.from_module)")
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
    p.add_argument("--keep-tiles", action="store_true", help="keep the tile store once the Gram is complete")
    p.add_argument("--force", action="store_true", help="replace a complete Gram of another command in --out")
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


def load_module(spec: str):
    """An instance of CLASS from 'FILE.py:CLASS' (the file is run as a module: use only your own files)."""
    from torch import nn
    path, _, name = spec.rpartition(":")
    if not path.endswith(".py") or not name.isidentifier():
        raise ValueError(f"--module must be FILE.py:CLASS, like mynet.py:Net; got {spec!r}")
    if not Path(path).is_file():
        raise ValueError(f"--module {spec}: no such file {path}")
    loader = importlib.util.spec_from_file_location(Path(path).stem, path)
    module = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(module)
    cls = getattr(module, name, None)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ValueError(f"--module {spec}: {path} has no nn.Module class {name!r}")
    try:
        return cls()
    except TypeError as err:
        raise ValueError(f"--module {spec}: {name}() must build with no arguments ({err})") from None


def takes_vectors(module) -> bool:
    """Whether the first layer with weights of a plain nn.Module is a Linear (its inputs are then flattened)."""
    from torch import nn
    first = next((m for m in module.modules() if not list(m.children()) and getattr(m, "weight", None) is not None), None)
    return isinstance(first, nn.Linear)


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


def gram_model(args, dtype, datasets):
    """(model, data set, X) of the command line: --model or a traced --module, with the checkpoint's weights."""
    n = {"n_train" if args.split == "train" else "n_test": args.n}
    if args.model:
        model = build_model(args.model).to(dtype).eval()
        if args.checkpoint:
            load_weights(model, args.checkpoint)
        flatten = len(model.input_shape) == 1
    else:
        from .models import from_module
        module = load_module(args.module).to(dtype).eval()
        if args.checkpoint:
            load_weights(module, args.checkpoint)
        flatten = takes_vectors(module)
    ds = datasets.load(args.dataset, root=args.data_root, flatten=flatten, dtype=dtype, **n)
    X = ds.X_train if args.split == "train" else ds.X_test
    if args.module:
        model = from_module(module, X[:1], gating=args.gating)
    return model, ds, X


def context(args, model, ds) -> dict:
    """What OUT.json records of a Gram: the rows (labels, indices), the data, the model and the kernel."""
    from .kernels.store import model_fingerprint
    y = ds.y_train if args.split == "train" else ds.y_test
    return {"kernel": args.kernel, "dtype": args.dtype, "memory_budget": args.memory_budget,
            "model": {"spec": args.model or f"{args.module} (gating={args.gating})", "checkpoint": args.checkpoint,
                      "fingerprint": model_fingerprint(model)},
            "data": {"dataset": ds.name, "split": args.split, "seed": ds.info["seed"], "checksum": ds.checksum(),
                     "indices": ds.info.get("indices", {}).get(args.split), "labels": y.tolist()}}


def run(args) -> int:
    """Compute the Gram of `args` into args.out, with OUT.json beside it; 0 on success, 2 (with a one-line
    message) on bad input."""
    import torch

    from . import data as datasets
    from .kernels.npk import npk_gram
    from .kernels.ntk import ntk_gram
    from .kernels.store import remove_store
    from .report import versions, write_json
    client = None
    try:
        if not args.out.endswith(".npy"):
            raise ValueError(f"--out must be a .npy file, got {args.out!r}")
        if args.checkpoint_dir is not None and not args.checkpoint_dir.strip():
            raise ValueError("--checkpoint-dir '': expected a folder path (omit it for OUT.tiles)")
        torch.manual_seed(args.seed)
        model, ds, X = gram_model(args, getattr(torch, args.dtype), datasets)
        sidecar, now = Path(args.out[:-len(".npy")] + ".json"), context(args, model, ds)
        if Path(args.out).is_file() and saved_context(sidecar) == now:
            print(f"{args.out} is complete for this command (see {sidecar}); nothing to do")
            return 0
        if saved_context(sidecar) is not None:
            if not args.force:
                differ = [k for k in now if saved_context(sidecar).get(k) != now[k]]
                raise ValueError(f"--out {args.out} holds a complete Gram of another command ({', '.join(differ)} "
                                 f"differ; see {sidecar}); pass --force to replace it, or choose another --out")
            sidecar.unlink()           # the record of the Gram that this run replaces
        if args.scheduler:
            from .kernels.dist import client_of
            client = client_of(args.scheduler, timeout=args.connect_timeout)[0]
        store = args.checkpoint_dir or args.out + ".tiles"
        options = dict(out=args.out, checkpoint_dir=store, max_memory=args.max_memory, scheduler=client,
                       progress=not args.no_progress)
        if args.memory_budget:
            options["memory_budget"] = args.memory_budget
        start = time.perf_counter()
        (npk_gram if args.kernel == "npk" else ntk_gram)(model, X, **options)
        seconds = time.perf_counter() - start
        write_json(sidecar, {"gram": Path(args.out).name, "shape": [len(X), len(X)], "context": now,
                             "seconds": round(seconds, 2), "versions": versions()})
        if not args.keep_tiles:
            remove_store(store)
    except (ValueError, OSError, MemoryError, RuntimeError, ImportError) as err:
        print(f"npk gram: error: {describe(err)}", file=sys.stderr)
        return 2
    finally:
        if client is not None:
            client.close()
    print(f"wrote {args.out} and {sidecar.name}: the {args.kernel.upper()} Gram of {len(X)} {ds.name} {args.split} "
          f"samples ({len(X)} x {len(X)} {args.dtype}) in {seconds:.1f} s")
    return 0


def saved_context(sidecar: Path) -> dict | None:
    """The "context" of an OUT.json that npk gram wrote, else None."""
    try:
        saved = json.loads(sidecar.read_text())
        return saved["context"] if isinstance(saved, dict) and isinstance(saved.get("context"), dict) else None
    except (OSError, ValueError):
        return None
