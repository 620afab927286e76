"""demo: the tour (networks vs their kernels, theorem checks, spectra) in one report; `make demo` runs it.

python analysis/demo.py [--dataset fashion-mnist --n 2000] [--out DIR] [--force]
"""
import sys

from npk.cli import main

if __name__ == "__main__":
    sys.exit(main(["demo", *sys.argv[1:]]))
