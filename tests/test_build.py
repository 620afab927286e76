"""The package build: `pip wheel .` carries the compiled conv NPK kernel, and an install from it uses it."""
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from helpers import ROOT

USES = ("import torch; from npk.kernels import conv_fast; from npk.models.conv import C4GAP; from npk import npk_gram\n"
        "with conv_fast.backend('extension'): npk_gram(C4GAP('dnn', in_channels=1, input_size=6, width=8), "
        "torch.randn(3, 1, 6, 6))\n"
        "print(conv_fast.extension()._name)")


@pytest.mark.slow
@pytest.mark.extension
def test_a_wheel_holds_the_kernel_and_an_install_from_it_uses_it(tmp_path):
    source = tmp_path / "src"                   # the files a clone has, without this checkout's builds
    source.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for folder in ("npk", "csrc"):
        shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "-w", str(tmp_path / "dist"), str(source)], check=True)
    wheel = next((tmp_path / "dist").glob("npk-*.whl"))
    kernels = [n for n in zipfile.ZipFile(wheel).namelist() if n.startswith("npk/kernels/_conv_npk_")]
    assert kernels and all(n.endswith(".so") for n in kernels)
    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True)
    out = subprocess.run([sys.executable, "-c", USES], cwd=tmp_path, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(site), "NPK_REQUIRE_EXT": "1", "NPK_CONV_LIB": ""})
    assert out.returncode == 0, out.stderr[-2000:]
    assert Path(out.stdout.strip()).parent == site / "npk" / "kernels"

