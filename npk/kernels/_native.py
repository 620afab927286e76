"""The native conv NPK kernel (csrc/conv_npk.cpp) through ctypes: find it, check it, declare it.

The package build (setup.py) compiles the kernel into this folder as `_conv_npk_<variant>.so`, one
variant per instruction-set level; `library()` loads the best one that this CPU supports, checks its
ABI version, and declares the argument and result types of every function it exports. Without a usable
library it says why, once, and conv Grams use the torch rules, unless $NPK_REQUIRE_EXT=1 (CI), which
turns that into an error. $NPK_CONV_LIB=path loads that file instead (benchmarks, a custom build).
"""
from __future__ import annotations

import ctypes
import os
import warnings
from pathlib import Path

ABI_VERSION = 3                 # NPK_CONV_ABI in csrc/conv_npk.cpp
HERE = Path(__file__).parent
# best first: variant -> CPU flags it needs (as /proc/cpuinfo names them)
VARIANTS = {"x86_64_v4_vpopcntdq": {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl", "avx512_vpopcntdq",
                                    "avx2", "bmi2", "fma"},
            "x86_64_v2": {"popcnt", "sse4_2", "ssse3", "cx16"},
            "generic": set()}
PORTABLE = {"x86_64_v2", "generic"}            # loaded where the CPU flags cannot be read
_p, _i, _i64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64
_ints, _doubles, _ptrs = ctypes.POINTER(_i), ctypes.POINTER(ctypes.c_double), ctypes.POINTER(_p)
#      M_in, x, y, c0, M_out, sums, n, m, H, W, layers, kh, kw, circular, bias, words, gx, gy, threads
_RUN = [_p, _p, _p, _i, _p, _p, _i64, _i64, _i, _i, _i, _ints, _ints, _ints, _doubles, _ints, _ptrs, _ptrs, _i]
SIGNATURES = {                                  # name -> (restype, argtypes), as csrc/conv_npk.cpp declares them
    "npk_conv_abi_version": (_i, []),
    "npk_conv_run_f32": (_i, _RUN),
    "npk_conv_run_f64": (_i, _RUN),
    "npk_and_popcount": (_i64, [_p, _p, _i64, _i64, _i]),
    #                    M, n, m, P, Q, C, sx, sy, gx, gy, M_out, threads
    "npk_select_sum_f32": (_i, [_p, _i64, _i64, _i64, _i64, _i, _p, _p, _p, _p, _p, _i]),
    "npk_select_sum_f64": (_i, [_p, _i64, _i64, _i64, _i64, _i, _p, _p, _p, _p, _p, _i]),
}
STATUS = {1: "a layer has more than 4,096 channels (64 words of packed gates); use conv_fast.backend('torch')",
          2: "the layers of one run mix zero and circular padding",
          3: "a conv kernel is larger than 63 along an axis",
          4: "a layer has a negative number of gate words (0 marks an ungated conv)",
          5: "a max-pool selection has no channels or no positions"}
_state: dict = {}


def library() -> ctypes.CDLL | None:
    """The checked, declared kernel library, or None (with one warning) when there is none to use.

    Raises:
        RuntimeError: when there is none and $NPK_REQUIRE_EXT=1.
    """
    if "lib" not in _state:
        _state["lib"], _state["why"] = _load()
    if _state["lib"] is None:
        message = f"the native conv NPK kernel is not used: {_state['why']}"
        if os.environ.get("NPK_REQUIRE_EXT") == "1":
            raise RuntimeError(message + " ($NPK_REQUIRE_EXT=1 requires it)")
        if not _state.get("warned"):
            _state["warned"] = True
            warnings.warn(message + "; conv NPK Grams use the slower torch rules", RuntimeWarning, stacklevel=2)
    return _state["lib"]


def check(status: int) -> None:
    """Raise the exact error of a kernel status code (0: success)."""
    if status:
        why = STATUS.get(status, f"unknown status {status}: the library and npk disagree, rebuild it (pip install .)")
        raise RuntimeError(f"the native conv NPK kernel refused the run: {why}")


def _load() -> tuple[ctypes.CDLL | None, str]:
    """(library, '') or (None, why not)."""
    forced = os.environ.get("NPK_CONV_LIB")
    if forced:
        return _open(Path(forced))
    built = candidates(cpu_flags())
    if not built:
        return None, f"no build of it for this CPU in {HERE} (reinstall npk with a C++ compiler: pip install .)"
    return _open(built[0])


def candidates(flags: set[str]) -> list[Path]:
    """The builds in this folder that a CPU with `flags` runs, best first (no flags: the portable ones)."""
    return [HERE / f"_conv_npk_{v}.so" for v, need in VARIANTS.items()
            if (need <= flags if flags else v in PORTABLE) and (HERE / f"_conv_npk_{v}.so").exists()]


def _open(path: Path) -> tuple[ctypes.CDLL | None, str]:
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as err:
        return None, f"{path} does not load ({err})"
    version = lib.npk_conv_abi_version() if hasattr(lib, "npk_conv_abi_version") else None
    if version != ABI_VERSION:
        return None, (f"{path} is stale (ABI version {version}, npk needs {ABI_VERSION}): "
                      "rebuild it with `pip install .` or `make ext`")
    for name, (restype, argtypes) in SIGNATURES.items():
        fn = getattr(lib, name, None)
        if fn is None:
            return None, f"{path} lacks {name}: rebuild it with `pip install .` or `make ext`"
        fn.restype, fn.argtypes = restype, argtypes
    return lib, ""


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo); empty elsewhere, which selects the portable builds."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((set(line.split(":", 1)[1].split()) for line in f if line.startswith("flags")), set())
    except OSError:
        return set()
