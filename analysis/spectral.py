"""spectral: the open question of arXiv 2110.03403, "Is DLGN a universal spectral approximator?": the
eigenvalue decay, the principal angles between top-k eigenspaces, the kernel-target alignment and the
top-k label energy of the DLGN's learnt NPK against the DNN's learnt NPK and empirical NTK, over a grid of
depths and widths.

CPU (digits, depths 2, 4 x widths 64, 256; a few minutes):  npk run spectral
CIFAR-10, a larger grid (GPU):  python analysis/spectral.py
  (CIFAR-10 python batches in ./data/cifar-10-batches-py, or pass --data-root)
The script runs its config, analysis/configs/spectral.json (--config FILE: another one); any flag of
`npk run` works here too (--out, --force, --set key=value).
"""
import sys
from pathlib import Path

from npk.cli import run_script

CONFIG = Path(__file__).with_name("configs") / "spectral.json"

if __name__ == "__main__":
    sys.exit(run_script("spectral", CONFIG, sys.argv[1:]))
