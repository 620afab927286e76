"""The package build: `pip wheel .` carries the compiled conv NPK kernel and an install from it uses it;
without a compiler the wheel still builds, and its install says once that it uses the torch rules."""
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from helpers import ROOT

GRAM = ("import torch, warnings; warnings.simplefilter('always'); from npk.kernels import conv_fast\n"
        "from npk.models.conv import C4GAP; from npk import npk_gram\n"
        "model, X = C4GAP('dnn', in_channels=1, input_size=6, width=8), torch.randn(3, 1, 6, 6)\n"
        "npk_gram(model, X); npk_gram(model, X)\n"
        "print(conv_fast.extension() and conv_fast.extension()._name)")


def build_and_install(tmp_path: Path, cxx: str) -> tuple[list[str], subprocess.CompletedProcess]:
    """(the kernel files in a wheel built from the repository's files with $CXX=cxx, the output of two
    conv Grams run by an install from that wheel)."""
    source = tmp_path / "src"                   # the files a clone has, without this checkout's builds
    source.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for folder in ("npk", "csrc"):
        shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "-w", str(tmp_path / "dist"), str(source)], check=True,
                   env={**os.environ, "CXX": cxx})
    wheel = next((tmp_path / "dist").glob("npk-*.whl"))
    kernels = [n for n in zipfile.ZipFile(wheel).namelist() if n.startswith("npk/kernels/_conv_npk")]
    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True)
    env = {**os.environ, "PYTHONPATH": str(site), "NPK_CONV_LIB": "", "NPK_REQUIRE_EXT": ""}
    return kernels, subprocess.run([sys.executable, "-c", GRAM], cwd=tmp_path, capture_output=True, text=True, env=env)


@pytest.mark.slow
@pytest.mark.extension
def test_a_wheel_holds_the_kernel_and_an_install_from_it_uses_it(tmp_path):
    kernels, run = build_and_install(tmp_path, os.environ.get("CXX", "c++"))
    assert kernels and all(n.endswith(".so") for n in kernels)
    assert run.returncode == 0, run.stderr[-2000:]
    assert Path(run.stdout.strip()).parent == tmp_path / "site" / "npk" / "kernels"


@pytest.mark.slow
def test_without_a_compiler_the_wheel_builds_and_its_install_says_once_it_uses_the_torch_rules(tmp_path):
    kernels, run = build_and_install(tmp_path, str(tmp_path / "no-compiler"))
    assert kernels == []
    assert run.returncode == 0 and run.stdout.strip() == "None", run.stderr[-2000:]
    assert run.stderr.count("conv NPK Grams use the slower torch rules") == 1
