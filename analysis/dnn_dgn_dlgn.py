"""dnn-dgn-dlgn: the ReLU network (DNN) against the deep gated network (DGN) and the deep linearly gated
network (DLGN), per architecture family, with the ratio DLGN / DNN of "Disentangling deep neural networks
with rectified linear units using duality" (arXiv 2110.03403: the DLGN "recovers more than 83.5%").

CPU (digits; FC, small conv and residual nets):  npk run dnn-dgn-dlgn
C4GAP and ResNet-110 on CIFAR-10 (GPU):           python analysis/dnn_dgn_dlgn.py
  CIFAR-100:  add --dataset cifar100;  VGG-16:  add --set conv_preset=VGG16
The script runs its config, analysis/configs/dnn-dgn-dlgn.json (--config FILE: another one); any flag of
`npk run` works here too (--out, --force, --set key=value).
"""
import sys
from pathlib import Path

from npk.cli import run_script

CONFIG = Path(__file__).with_name("configs") / "dnn-dgn-dlgn.json"

if __name__ == "__main__":
    sys.exit(run_script("dnn-dgn-dlgn", CONFIG, sys.argv[1:]))
