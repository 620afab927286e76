"""The ctypes binding of the native conv NPK kernel (npk.kernels._native): choice, checks, declarations."""
import ctypes
import ctypes.util
import re
from pathlib import Path

import pytest

from npk.kernels import _native

SOURCE = Path(__file__).resolve().parents[1] / "csrc" / "conv_npk.cpp"


def test_a_library_without_the_version_symbol_is_refused_as_stale():
    lib, why = _native._open(Path(ctypes.util.find_library("c")))
    assert lib is None and re.search(r"is stale \(ABI version None, npk needs \d+\): rebuild it", why)


@pytest.mark.extension
def test_a_library_of_another_abi_version_is_refused(monkeypatch):
    path = Path(_native.library()._name)
    monkeypatch.setattr(_native, "ABI_VERSION", _native.ABI_VERSION + 1)
    lib, why = _native._open(path)
    assert lib is None and f"(ABI version {_native.ABI_VERSION - 1}, npk needs {_native.ABI_VERSION})" in why


def test_every_function_the_source_exports_is_declared_with_its_arity():
    exported = SOURCE.read_text().split('extern "C" {', 1)[1]
    found = {name: len([a for a in args.split(",") if a.strip()])
             for name, args in re.findall(r"^\w[\w\s*]*?\b(npk_\w+)\(([^)]*)\)\s*\{", exported, re.M | re.S)}
    assert found == {name: len(argtypes) for name, (_, argtypes) in _native.SIGNATURES.items()}


@pytest.mark.extension
@pytest.mark.parametrize("words,kernel,circular,code", [(65, 3, (0, 0), 1), (1, 3, (0, 1), 2), (1, 65, (0, 0), 3),
                                                        (-1, 3, (0, 0), 4)])
def test_each_refusal_of_the_kernel_has_its_own_exact_message(words, kernel, circular, code):
    """Bad runs handed to the compiled kernel itself: its status code names the one cause."""
    ints = lambda *v: (ctypes.c_int * 2)(*v)                                       # noqa: E731
    status = _native.library().npk_conv_run_f64(None, None, None, 0, None, None, 1, 1, 1, 1, 2, ints(kernel, 3),
                                                ints(3, 3), ints(*circular), (ctypes.c_double * 2)(0, 0),
                                                ints(words, 1), (ctypes.c_void_p * 2)(), (ctypes.c_void_p * 2)(), 1)
    assert status == code
    with pytest.raises(RuntimeError, match=re.escape(_native.STATUS[code])):
        _native.check(status)
    assert len(set(_native.STATUS.values())) == len(_native.STATUS)


def test_an_unknown_status_says_the_library_disagrees():
    _native.check(0)
    with pytest.raises(RuntimeError, match="unknown status 99: the library and npk disagree, rebuild it"):
        _native.check(99)


def test_npk_require_ext_turns_a_missing_kernel_into_an_error(monkeypatch):
    monkeypatch.setattr(_native, "_state", {"lib": None, "why": "no build of it (planted)"})
    monkeypatch.setenv("NPK_REQUIRE_EXT", "1")
    with pytest.raises(RuntimeError, match=r"no build of it \(planted\) \(\$NPK_REQUIRE_EXT=1 requires it\)"):
        _native.library()


@pytest.mark.parametrize("flags,want", [({"popcnt", "sse4_2", "ssse3", "cx16"}, "x86_64_v2"),
                                        (set(), "x86_64_v2"),
                                        (set.union(*_native.VARIANTS.values()), "x86_64_v4_vpopcntdq")])
def test_the_best_build_that_the_cpu_runs_is_chosen(monkeypatch, tmp_path, flags, want):
    for variant in ("x86_64_v2", "x86_64_v4_vpopcntdq"):                 # what an x86-64 install holds
        (tmp_path / f"_conv_npk_{variant}.so").touch()
    monkeypatch.setattr(_native, "HERE", tmp_path)
    assert _native.candidates(flags)[0] == tmp_path / f"_conv_npk_{want}.so"
    assert _native.candidates({"sse2"}) == []                    # a CPU below x86-64-v2: none


@pytest.mark.extension
def test_npk_conv_lib_loads_the_named_build(monkeypatch):
    path = sorted(Path(_native.__file__).parent.glob("_conv_npk_*.so"))[0]
    monkeypatch.setenv("NPK_CONV_LIB", str(path))
    lib, why = _native._load()
    assert lib is not None and lib._name == str(path) and why == ""
