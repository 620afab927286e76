"""shuffle-and-ones: from "Explicitising the implicit interpretability of deep neural networks via duality"
(arXiv 2203.16455): a DLGN / DGN whose value network reads a constant all-ones input, and one whose gates
are shuffled (a fixed permutation of the gated layers; of the units of every layer as the control) with the
value network retrained; the NPK of shuffled and unshuffled gates compared exactly.

CPU (digits, FC 3x128):              python analysis/shuffle_and_ones.py
C4GAP on CIFAR-10 (GPU):             python analysis/shuffle_and_ones.py --config analysis/configs/shuffle-and-ones.json
Any flag of `npk run` works here (--out, --force, --quick, --set key=value).
"""
import sys

from npk.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", "shuffle-and-ones", *sys.argv[1:]]))
