"""Small argument checks shared by the constructors and entry points: one clear ValueError each.

Each check returns the value it accepted (converted where that is lossless), so a call site reads
`d_in = positive_int("d_in", d_in)`.
"""
from __future__ import annotations

import math
import re
from numbers import Integral, Real

import torch


def positive_int(name: str, value) -> int:
    """`value` as an int >= 1; floats (even 4.0), bools and strings are refused.

    Example: positive_int("d_in", 4) -> 4;  positive_int("d_in", 4.5) -> ValueError.
    """
    if not isinstance(value, Integral) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def positive_ints(name: str, values, allow_empty: bool = False) -> list[int]:
    """`values` as a list of ints >= 1 (from a list, tuple or range; a string is refused), non-empty
    unless allow_empty.

    Example: positive_ints("widths", [64, 64]) -> [64, 64];  positive_ints("widths", "64") -> ValueError.
    """
    ok = isinstance(values, (list, tuple, range)) and (allow_empty or len(values) > 0) \
        and all(isinstance(v, Integral) and not isinstance(v, bool) and v >= 1 for v in values)
    if not ok:
        raise ValueError(f"{name} must be a {'' if allow_empty else 'non-empty '}list of positive ints "
                         f"(e.g. [64, 64]), got {values!r}")
    return [int(v) for v in values]


def finite_number(name: str, value, minimum: float | None = None, strict: bool = False) -> float:
    """`value` as a finite float, >= minimum (> minimum when strict) when a minimum is given.

    Example: finite_number("beta", 4) -> 4.0;  finite_number("beta", float("nan"), 0, strict=True) -> ValueError.
    """
    ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok and minimum is not None:
        ok = value > minimum if strict else value >= minimum
    if not ok:
        bound = "" if minimum is None else f" {'>' if strict else '>='} {minimum:g}"
        raise ValueError(f"{name} must be a finite number{bound}, got {value!r}")
    return float(value)


UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
         "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def byte_count(name: str, value) -> int:
    """`value` as a positive whole number of bytes: an int, a finite float, or a text like '512MiB', '2GB', '1e9'.

    Example: byte_count("max_memory", "8GiB") -> 8589934592;  byte_count("max_memory", float("nan")) -> ValueError.
    """
    number = value
    if isinstance(value, str):
        match = re.fullmatch(r"\s*([0-9.]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*", value)
        try:
            number = float(match.group(1)) * UNITS[match.group(2).lower()]
        except (AttributeError, KeyError, ValueError):
            number = None
    ok = isinstance(number, Real) and not isinstance(number, bool) and math.isfinite(number) and number >= 1
    if not ok:
        raise ValueError(f"{name} must be a positive number of bytes like 8GiB, 512MiB or 1e9, got {value!r}")
    return int(number)


def nonempty_samples(name: str, X) -> None:
    """A ValueError unless X (N, ...) holds at least one sample.

    Example: nonempty_samples("X", torch.zeros(0, 4)) -> ValueError naming X.
    """
    if isinstance(X, torch.Tensor) and X.dim() >= 1 and len(X) == 0:
        raise ValueError(f"{name} holds no samples (shape {tuple(X.shape)}); pass at least one sample")


def finite_values(name: str, values) -> None:
    """A ValueError naming the first non-finite entries of a floating tensor / array.

    Example: finite_values("y_train", torch.tensor([1.0, float("nan")])) -> ValueError naming index 1.
    """
    t = torch.as_tensor(values)
    if t.is_floating_point() and not torch.isfinite(t).all():
        bad = (~torch.isfinite(t)).nonzero()[:3].tolist()
        raise ValueError(f"{name} contains NaN or inf (first bad indices {bad}); drop or fix those entries")


def check_gram_request(X, Y, memory_budget) -> None:
    """The shared checks of a Gram computation: X and Y hold samples, memory_budget is a positive byte count.

    Example: check_gram_request(torch.ones(3, 4), None, 2**30) passes; an empty X raises a ValueError.
    """
    nonempty_samples("X", X)
    if Y is not None:
        nonempty_samples("Y", Y)
    finite_number("memory_budget (bytes)", memory_budget, 0, strict=True)
